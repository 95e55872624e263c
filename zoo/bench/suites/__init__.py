"""The benchmark suites, one module per family; importing this package registers every suite in
``zoo.bench.registry.SUITES``."""

from zoo.bench.registry import GOALS, SUITES
from zoo.bench.suites import (  # noqa: F401  (each registers its suites)
    baseline,
    convert,
    growth,
    growth_baseline,
    memory,
    routing,
    routing_baseline,
    speed,
    unfreeze,
)

__all__ = ["GOALS", "SUITES"]
