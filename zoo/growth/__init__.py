"""Growth operators and their parameter maps (pure: they return old -> new maps)."""
