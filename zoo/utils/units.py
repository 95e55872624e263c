"""Human-readable numbers for reports and model cards (one formatting, so cards and `zoo profile` agree)."""

from __future__ import annotations


def si(n: float, unit: str = "") -> str:
    """1.23e9 -> '1.23 G' + unit."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"
