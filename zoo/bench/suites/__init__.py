"""The benchmark suites, one module per family; importing this package registers every suite in
``zoo.bench.registry.SUITES``."""

from zoo.bench.registry import GOALS, SUITES
from zoo.bench.suites import baseline, convert, growth, memory, routing, speed, unfreeze  # noqa: F401  (each registers its suites)

__all__ = ["GOALS", "SUITES"]
