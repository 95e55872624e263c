"""Measurement: one stopwatch, one measurement step, FLOPs, memory, profile, memory plan, model comparison."""
