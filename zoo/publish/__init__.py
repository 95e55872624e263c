"""Publishing: export of a run to a hub folder, model cards, reproduce."""
