"""Small utilities shared by every layer: run manifests and atomic JSON writes, units, fault injection."""
