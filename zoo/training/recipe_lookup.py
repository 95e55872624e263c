"""Where a recipe named on the command line lives: a file path, or a bare name looked up in ``schedules/``."""

from __future__ import annotations

from pathlib import Path

from zoo.models.pretrained import CHECKOUT


def schedules_dir() -> Path:
    """``schedules/`` of the source checkout (or editable install), else ``schedules/`` in the working directory."""
    here = CHECKOUT / "schedules"
    return here if here.is_dir() else Path("schedules")


def resolve_recipe_path(name: str) -> Path:
    """A recipe file path, or a bare recipe name looked up in ``schedules/``."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return schedules_dir() / f"{name}.yaml"
