"""Where a recipe named on the command line lives: a file path, or a bare name looked up in ``schedules/``."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from zoo.models.pretrained import CHECKOUT
from zoo.training.recipe import RecipeError


def schedules_dir() -> Path:
    """``schedules/`` of the source checkout (or editable install), else the copy a wheel ships inside the package
    (``zoo/schedules``), else ``schedules/`` in the working directory."""
    here = CHECKOUT / "schedules"
    if here.is_dir():
        return here
    shipped = Path(str(resources.files("zoo") / "schedules"))
    return shipped if shipped.is_dir() else Path("schedules")


def resolve_recipe_path(name: str) -> Path:
    """A recipe file path, or a bare recipe name looked up in ``schedules/`` (an unknown name is an error listing the
    closest bundled names)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = schedules_dir() / f"{name}.yaml"
    if not path.is_file():
        names = sorted(q.stem for q in schedules_dir().glob("*.yaml"))
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"bundled: {', '.join(names)}"
        raise RecipeError(name, "<recipe>", f"no such recipe file, nor a recipe of that name in schedules/; {hint}")
    return path
