"""Datasets (in-memory tensors for small data) and the batched augmentation pipeline."""
