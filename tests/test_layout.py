"""The package's layering: every import of the package's own modules (module level or inside a function) points from
a folder to itself or to a folder below it in ``LAYERS``, so there are no import circles between folders; and the
package's top level stays small. The same order is the README's "Layout" table."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zoo"
# bottom layer first; a module may import its own layer and any layer before it
LAYERS = [
    "version",
    "utils",
    "data",
    "nn",
    "models",
    "hub",
    "growth",
    "measure",
    "training",
    "bench",
    "publish",
    "demo",
    "cli",
]
TOP_LEVEL_MODULES = {"__init__", "version", "demo"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "zoo" or len(parts) < 2:
        return None  # `import zoo` itself: the package face
    return parts[1]


def own_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("zoo"):
            found += [f"{node.module}.{a.name}" if node.module == "zoo" else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("zoo")]
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down_the_layers(path):
    rel = path.relative_to(PACKAGE)
    if rel.name == "__init__.py" and len(rel.parts) == 1:
        return  # zoo/__init__.py is the public face: it may expose any subpackage
    own = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    assert own in LAYERS, f"{rel}: folder {own!r} is not in LAYERS (add it to the README's Layout table too)"
    for target in own_imports(path):
        layer = layer_of(target)
        if layer is None:
            continue
        assert layer in LAYERS, f"{rel} imports {target}: unknown layer {layer!r}"
        assert LAYERS.index(layer) <= LAYERS.index(own), f"{rel} ({own}) imports {target} from the higher layer {layer}"


def test_top_level_stays_small():
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat <= TOP_LEVEL_MODULES, f"modules directly under zoo/: {sorted(flat - TOP_LEVEL_MODULES)}"
