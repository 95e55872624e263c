"""Blocks and layers: attention and its variants, the pre-norm block, token routing, stems, activation checkpointing."""
