"""Recipes: typed, validated settings loaded from YAML, with errors that name the file and field.

A recipe is data, not code: it round-trips through ``to_dict`` so it can be saved with every run, hashed into the
manifest, and embedded in checkpoints and model cards. The sections are pydantic models (``recipe_schema``: types,
defaults, ranges), the checks across fields are ``recipe_checks``; this module reads files and ``--set`` overrides,
turns every problem into a ``RecipeError`` naming the file and the dotted field, and defines the recipe's identity.
Pydantic replaced ~440 hand-written lines of coercion and range checks (CHANGELOG: user paths).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from zoo.training.recipe_checks import check_recipe
from zoo.training.recipe_schema import (  # noqa: F401  (the sections are part of this module's interface)
    DataConfig,
    DistillConfig,
    GrowthConfig,
    GrowthStage,
    MergingConfig,
    ModelConfig,
    OptimConfig,
    RecipeSchema,
    RoutingConfig,
    ScheduleConfig,
    TrainConfig,
    UnfreezeConfig,
    UnfreezeStage,
)
from zoo.utils.strict_yaml import StrictYAMLError, load_strict_yaml

# The recipe schema's version, recorded in every run's manifest. Fields added after version 1, with the version that
# added them and their neutral value: the value that reproduces the behaviour from before the field existed. A field's
# neutral value never changes once released (it is part of the identity of every run recorded before it).
SCHEMA_VERSION = 7
ADDED_FIELDS: dict[str, tuple[int, Any]] = {
    "unfreeze.start": (7, None),
    "unfreeze.scale_lr": (7, False),
    "routing.weight": (7, "sigmoid"),
    "routing.weight_scale": (7, 0.5),
    "data.streaming": (6, False),
    "data.shuffle_buffer": (6, 10_000),
    "unfreeze.cache_prefix": (6, False),
    "unfreeze.cache_max_mb": (6, 4096.0),
    "train.compile": (5, None),
    "distill": (4, None),  # a whole section: its neutral value is its absence
    "merging": (4, None),
    "unfreeze.anneal_lr": (4, False),
    "unfreeze.check_every": (4, 0.05),
    "unfreeze.threshold": (4, 0.01),
    "data.val_split": (2, None),
    "data.cache": (3, "auto"),
    "data.cache_max_mb": (3, 1024.0),
    "data.image_column": (3, None),
    "data.label_column": (3, None),
    "data.auto_augment": (3, None),
    "data.reprob": (3, 0.0),
    "data.remode": (3, "pixel"),
    "data.mixup": (3, 0.0),
    "data.cutmix": (3, 0.0),
    "data.mix_prob": (3, 1.0),
    "data.mix_switch_prob": (3, 0.5),
    "schedule.decay": (2, "cosine"),
    "schedule.hold": (2, 0.0),
    "train.ema_warmup": (2, False),
}


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the dotted field."""

    def __init__(self, source: str, field_path: str, message: str):
        self.source, self.field_path = source, field_path
        super().__init__(f"{source}: {field_path}: {message}")


class Recipe(RecipeSchema):
    def to_dict(self) -> dict:
        """Plain data, every field (what ``recipe.yaml`` holds); a stage's unset ``at`` / ``step`` is left out, so
        recipes written before ``step`` existed keep their hash (manifests, checkpoints and model cards record it)."""
        data = self.model_dump()
        for section in ("growth", "unfreeze"):
            for st in (data.get(section) or {}).get("stages") or []:
                for key in ("at", "step"):
                    if st.get(key) is None:
                        st.pop(key, None)
        return data

    def identity(self) -> dict:
        """What the recipe hash covers: ``to_dict`` without the fields added after the first schema that hold their
        neutral value (``ADDED_FIELDS``). Adding a field whose default reproduces the old behaviour therefore leaves
        every existing hash unchanged, while any other value of it, a changed default included, enters the hash
        (and every field of the first schema is always covered, defaults included)."""
        data = self.to_dict()
        for dotted, (_, neutral) in ADDED_FIELDS.items():
            if "." not in dotted:  # an added section
                if data.get(dotted) == neutral:
                    del data[dotted]
                continue
            section, key = dotted.split(".")
            values = data.get(section)
            if isinstance(values, dict) and key in values and values[key] == neutral:
                del values[key]
        return data


# ------------------------------------------------------------------------------------------------------ errors
# what a value of the wrong kind was expected to be, per pydantic error type
_EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true/false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "list_type": "a list",
    "none_required": "null",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}  # fmt: skip
# pydantic names the union member or validator a nested error came from inside ``loc`` ("list[...]",
# "function-before[...]", "float"): not fields, dropped from the dotted path
_UNION_TAG = re.compile(r".*\[.*\]|float|int|bool|str|none|literal")


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.fullmatch(part):
            out += f".{part}" if out else part
    return out


def _section_type(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``list[X]``, else the annotation itself."""
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _section_type(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names of the section an unknown key was found in (walked from the schema along ``loc``)."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        model = _section_type(field.annotation)
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _kind_error(e: dict) -> bool:
    return e["type"] in _EXPECTED or e["type"] == "literal_error"


def recipe_error(source: str, error: ValidationError) -> RecipeError:
    """One ``RecipeError`` for pydantic's errors: the most specific one, worded for people who write YAML.

    A value that fails every member of a union gets one error per member. A range error (the value was of the
    right kind) or an error deeper inside a list is the one to report; a value of no accepted kind is reported
    with every kind the field accepts ("expected 'every_other' or 'all' or a list")."""
    errors = error.errors()
    e = min(errors, key=lambda x: (_kind_error(x), -len(x["loc"])))
    where, kind, ctx, value = _dotted(e["loc"]) or "<root>", e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "extra_forbidden":
        msg = f"unknown key (allowed: {', '.join(_allowed_keys(e['loc']))})"
    elif kind == "missing":
        msg = "required field is missing"
    elif kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        msg = f"must be {sign} {ctx[key]}, got {value!r}"
    elif kind == "finite_number":
        msg = f"must be a finite number, got {value!r}"
    elif kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        msg = f"must have {bound} {ctx.get('min_length', ctx.get('max_length'))} entries, got {len(value)}"
    elif _kind_error(e):
        same = [x for x in errors if _kind_error(x) and _dotted(x["loc"]) == _dotted(e["loc"])]
        kinds = [x["ctx"]["expected"] if x["type"] == "literal_error" else _EXPECTED[x["type"]] for x in same]
        msg = f"expected {' or '.join(dict.fromkeys(kinds))}, got {value!r}"
    else:
        msg = f"{e['msg']}, got {value!r}"
    return RecipeError(source, where, msg)


# ------------------------------------------------------------------------------------------------------ overrides
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``a.b[0].c=value`` -> (["a", "b", 0, "c"], yaml-parsed value)."""
    if "=" not in text:
        raise RecipeError("--set", text, "expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    path: list[str | int] = []
    for part in key.split("."):
        m = _PATH_PART.fullmatch(part)
        if m is None:
            raise RecipeError("--set", key, "expected key.path=value (a path like growth.stages[0].at)")
        path.append(m.group(1))
        path += [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise RecipeError("--set", key, f"value is not valid YAML: {e}") from None
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to a raw recipe mapping (validation happens after, on the merged result). Missing
    mappings on the path are created; a list index must exist (``growth.stages[1].at`` changes stage 1)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path):
            where = _dotted(tuple(path[: i + 1]))
            last = i == len(path) - 1
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    size = f"has {len(node)} entries" if isinstance(node, list) else "is not a list"
                    raise RecipeError("--set", where, f"no such entry: {_dotted(tuple(path[:i]))} {size}")
            elif not isinstance(node, dict):
                raise RecipeError("--set", _dotted(tuple(path[:i])), "is not a mapping")
            elif not last and node.get(part) is None:
                node[part] = {}
            if last:
                node[part] = value
            else:
                node = node[part]
    return data


def recipe_from_dict(data: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(source, "<root>", f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise recipe_error(source, e) from None

    def err(where: str, msg: str) -> RecipeError:
        return RecipeError(source, where, msg)

    check_recipe(recipe, err)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, "<file>", "recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(source, "<file>", f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise RecipeError(source, "<file>", f"cannot be read: {e.strerror or e}") from None
    try:
        data = load_strict_yaml(text)
    except StrictYAMLError as e:
        raise RecipeError(source, "<file>", str(e)) from None
    except yaml.YAMLError as e:
        raise RecipeError(source, "<file>", f"not valid YAML: {e}") from None
    if data is None:  # an empty file would silently train every default for 10 epochs
        raise RecipeError(source, "<file>", "the recipe is empty; write at least `model:` and `data:`")
    if not isinstance(data, dict):
        raise RecipeError(source, "<root>", f"expected a mapping at the top level, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with --set)"
    return recipe_from_dict(data, source)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def flatten_dotted(d: dict, prefix: str = "") -> dict:
    """A nested recipe mapping as ``{"section.key": value}`` (empty mappings stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
