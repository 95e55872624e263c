"""Model folders (timm's hub layout: ``config.json`` + ``model.safetensors``): save, and load without pickle.

Loading never calls ``torch.load``: weights come only from safetensors and configuration only from JSON, whether the
source is a local folder, a hub repo (through the hub cache, so ``HF_HUB_OFFLINE=1`` works), or a bare safetensors
file of a timm/zoo ViT. Every failure names the file and the field.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

import zoo.models  # noqa: F401  (registers the zoo_* architectures before any folder is loaded)
from zoo.hub.safetensors_bytes import make_reproducible
from zoo.models.pretrained import HUB_ORG, PUBLISHED, card_folder
from zoo.models.zoo_vit import checkpoint_filter_fn
from zoo.version import __version__

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# pretrained_cfg keys that locate weights: never exported (a config must not point a loader at another file) and
# dropped on load; the loaders here only ever read the two fixed file names above, inside the folder
SOURCE_KEYS = ("file", "source", "hf_hub_id", "hf_hub_filename", "url", "state_dict", "custom_load")


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; names the file and the field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


class PublishError(ValueError):
    """A folder or repo that cannot be pushed (offline, no token, not a loadable folder); names the file/field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, shapes and bytes (stored in safetensors metadata: the format has no checksum)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """:func:`state_hash` of the model's state dict (what ``save_model_folder`` stores as ``weights_sha256``)."""
    return state_hash(model.state_dict())


def json_safe(obj: Any) -> Any:
    """Tuples -> lists recursively, so configs compare equal after a JSON round trip."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def model_config(model: nn.Module) -> dict:
    """timm ``config.json`` content for a zoo model, with the *current* architecture (after growth / routing)."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    for k in SOURCE_KEYS:
        cfg.pop(k, None)
    args = dict(model.model_args)
    cfg["input_size"] = [args["in_chans"], args["img_size"], args["img_size"]]
    cfg["num_classes"] = model.num_classes
    return json_safe(
        {
            "architecture": cfg.pop("architecture", None) or type(model).__name__,
            "num_classes": model.num_classes,
            "num_features": model.num_features,
            "global_pool": model.global_pool,
            "model_args": args,
            "pretrained_cfg": cfg,
        }
    )


def _replace_atomic(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_model_folder(
    model: nn.Module, folder: str | Path, metadata: dict[str, str] | None = None, config_extra: dict | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (each atomically: temp file + rename).

    ``metadata`` adds safetensors header entries (e.g. ``recipe_hash``); ``config_extra`` updates top-level
    ``config.json`` fields (e.g. ``label_names``) and ``pretrained_cfg`` entries (under that key, e.g. mean/std).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    extra = dict(config_extra or {})
    cfg["pretrained_cfg"].update(json_safe(extra.pop("pretrained_cfg", {})))
    cfg.update(json_safe(extra))

    meta = {"architecture": cfg["architecture"], "zoo_version": __version__, "weights_sha256": weights_hash(model)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tmp_w, tmp_c = folder / f".{WEIGHTS_NAME}.tmp", folder / f".{CONFIG_NAME}.tmp"
    save_model(model, str(tmp_w), metadata=meta)
    make_reproducible(tmp_w)  # same weights and metadata -> same bytes (no spurious hub uploads)
    tmp_c.write_text(json.dumps(cfg, indent=2) + "\n")
    os.chmod(tmp_w, os.stat(tmp_c).st_mode & 0o777)  # safetensors creates 0600 files; use the umask like the config
    _replace_atomic(tmp_w, folder / WEIGHTS_NAME)
    _replace_atomic(tmp_c, folder / CONFIG_NAME)
    return folder


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(str(path), "<file>", "config.json not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(str(path), "<file>", f"not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(str(path), "<root>", "expected a JSON object")
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(str(path), "architecture", "missing or not a string")
    if not timm.is_model(arch):
        raise ModelLoadError(str(path), "architecture", f"{arch!r} is not a registered model (did you `import zoo`?)")
    if not isinstance(cfg.get("model_args", {}), dict):
        raise ModelLoadError(str(path), "model_args", "expected a JSON object")
    return cfg


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata (str -> str; empty when the file has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(str(path), "<file>", f"corrupt or truncated safetensors: {e}") from None


def read_weights(path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; when its metadata holds ``weights_sha256`` the tensors must match it (bytes
    corrupted inside an intact data section otherwise load silently)."""
    if not path.is_file():
        raise ModelLoadError(str(path), "<file>", "weights file not found (only safetensors is accepted)")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(str(path), "<file>", f"corrupt or truncated safetensors: {e}") from None
    expected = read_metadata(path).get("weights_sha256") if verify else None
    if expected and state_hash(state) != expected:
        msg = "the tensors do not match the stored hash: the file is corrupted or was modified after saving"
        raise ModelLoadError(str(path), "weights_sha256", msg)
    return state


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load with every mismatch reported by name: missing keys, unexpected keys, shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        raise ModelLoadError(source, "weights", f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ModelLoadError(
            source, "weights", f"unknown keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if v.shape != state[k].shape
    ]
    if bad:
        raise ModelLoadError(source, "weights", "shape mismatch with config: " + "; ".join(bad[:3]))
    # load_state_dict casts silently: int64 "weights" would load as floats and evaluate as garbage
    bad = [f"{k}: file {state[k].dtype} vs model {v.dtype}" for k, v in own.items() if not _same_kind(state[k], v)]
    if bad:
        raise ModelLoadError(source, "weights", "dtype mismatch: " + "; ".join(bad[:3]))
    model.load_state_dict(state, strict=True)


# Bounds on the sizes an untrusted config.json may ask for: far above any zoo model, far below what hangs a loader
# (a depth of a million builds for minutes) or exhausts memory before the weights are even read.
ARG_LIMITS = {"depth": (1, 256), "embed_dim": (1, 16384), "num_heads": (1, 512), "num_classes": (0, 1_000_000),
              "img_size": (1, 8192), "patch_size": (1, 1024), "in_chans": (1, 64), "mlp_ratio": (0, 64),
              "stem_width": (1, 4096), "reg_tokens": (0, 1024)}  # fmt: skip


def check_model_args(arch: str, model_args: dict, source: str) -> None:
    """Only the arguments the architecture records in its own ``model_args`` (what ``zoo export`` writes), each
    within ``ARG_LIMITS``. ``timm.create_model`` also takes loader arguments (``checkpoint_path`` opens any file,
    ``pretrained_cfg_overlay`` redirects downloads): from a downloaded folder they are refused."""
    with torch.device("meta"):  # the default architecture's recorded arguments, without allocating its weights
        reference = timm.create_model(arch, pretrained=False)
    known = set(getattr(reference, "model_args", None) or inspect.signature(type(reference)).parameters)
    known.add("num_classes")  # the head's size is stored beside model_args in config.json
    for key, value in model_args.items():
        if key not in known:
            msg = f"not an argument {arch} records (known: {', '.join(sorted(known))})"
            raise ModelLoadError(source, f"model_args.{key}", msg)
        low, high = ARG_LIMITS.get(key, (None, None))
        values = value if isinstance(value, (list, tuple)) else [value]
        if low is not None and any(isinstance(v, (int, float)) and not low <= v <= high for v in values):
            raise ModelLoadError(source, f"model_args.{key}", f"{value!r} is outside [{low}, {high}]")


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both floating point (fp32 / fp16 / bf16 weights load into any float model) or exactly the same dtype."""
    return a.dtype == b.dtype or (a.is_floating_point() and b.is_floating_point())


def _build(arch: str, model_args: dict, source: str, **overrides) -> nn.Module:
    check_model_args(arch, model_args, source)
    kwargs = {**model_args, **overrides}
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ModelLoadError(source, "model_args", f"cannot build {arch} with {kwargs}: {e}") from None


def load_folder(folder: str | Path, **overrides) -> nn.Module:
    """Build the model a folder's ``config.json`` describes and load its ``model.safetensors`` strictly."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(str(folder), "<folder>", "model folder not found")
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.exists() and (folder / "model" / CONFIG_NAME).is_file():  # a `zoo train --out` run folder
        raise ModelLoadError(str(folder), "<folder>", f"a run folder; its model is {folder / 'model'}")
    cfg = read_config(cfg_path)
    args = dict(cfg.get("model_args", {}))
    if "num_classes" in cfg:
        args.setdefault("num_classes", cfg["num_classes"])
    model = _build(cfg["architecture"], args, str(cfg_path))
    load_state_strict(model, read_weights(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    pcfg = {k: v for k, v in dict(cfg.get("pretrained_cfg") or {}).items() if k not in SOURCE_KEYS}
    if isinstance(cfg.get("label_names"), list):
        pcfg["label_names"] = cfg["label_names"]
    pcfg.update(architecture=cfg["architecture"], file=str(folder), source="local-dir")
    model.pretrained_cfg = pcfg
    if "num_classes" in overrides and overrides["num_classes"] != model.num_classes:
        model.reset_classifier(overrides["num_classes"])
    return model


def hub_offline(constants) -> bool:
    """huggingface_hub's offline switch: ``constants.is_offline_mode()`` since 1.x (it follows the environment), the
    ``HF_HUB_OFFLINE`` constant read at import before (the declared minimum, 0.26, has only that)."""
    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check is not None else constants.HF_HUB_OFFLINE)


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the cache, offline) a hub repo's config and weights; returns the local snapshot folder.

    Both files come from one commit: the weights are fetched at the commit the config resolved to.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

    source = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    offline = hub_offline(constants)
    try:
        cfg = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision))
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=cfg.parent.name)
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable"
        raise ModelLoadError(
            source, "<repo>", f"not in the local hub cache ({constants.HF_HUB_CACHE}) and {why}: {e}"
        ) from None
    except EntryNotFoundError as e:
        raise ModelLoadError(source, "<repo>", f"the repo has no {CONFIG_NAME} / {WEIGHTS_NAME}: {e}") from None
    except HFValidationError as e:
        raise ModelLoadError(source, "<repo>", f"not a valid repo id: {e}") from None
    except (OSError, ValueError) as e:  # HTTP errors (repo not found, gated, 401), connection errors
        raise ModelLoadError(source, "<repo>", f"cannot download: {type(e).__name__}: {e}") from None
    return cfg.parent


def load_model(source: str, **overrides) -> nn.Module:
    """Load a model from ``local-dir:PATH``, ``hf-hub:ORG/NAME[@rev]``, a folder, or a registered model name.

    ``overrides`` may set ``num_classes`` (the head is reset when it differs from the saved one).
    """
    if source.startswith("local-dir:"):
        return load_folder(source[len("local-dir:") :], **overrides)
    if source.startswith("hf-hub:"):
        repo, _, rev = source[len("hf-hub:") :].partition("@")
        return load_folder(hub_folder(repo, rev or None), **overrides)
    if Path(source).is_dir():
        return load_folder(source, **overrides)
    if "." in source and timm.is_model(source.partition(".")[0]):
        return _load_published(source, **overrides)
    if timm.is_model(source):
        return timm.create_model(source, **overrides)  # a bare architecture name: untrained, as in timm
    close = difflib.get_close_matches(source, [*timm.list_models("zoo_*"), *PUBLISHED], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ModelLoadError(source, "<source>", "not a folder, local-dir:/hf-hub: id, or registered model name" + hint)


def default_published_tag(name: str) -> str | None:
    """The published tag ``timm.create_model(name, pretrained=True)`` loads for a bare architecture name, or None
    when the architecture has no published weights."""
    try:
        tag = timm.models.get_pretrained_cfg(name).tag
    except (RuntimeError, AttributeError):
        return None
    return f"{name}.{tag}" if tag and f"{name}.{tag}" in PUBLISHED else None


def _load_published(tag: str, **overrides) -> nn.Module:
    """A published tag (``zoo_vit_micro_p7.fmnist``): its bundled folder, else its hub repo, through the same
    safetensors + JSON loader with the weights hash check. An unknown tag is an error: timm would strip it and
    build random weights with only a logged warning."""

    if tag not in PUBLISHED:
        try:
            hub_id = timm.models.get_pretrained_cfg(tag).hf_hub_id
        except RuntimeError:  # a tag timm does not know
            hub_id = None
        if hub_id and hub_id.startswith("timm/"):  # timm's own weights (safetensors on the hub) in a zoo model
            return timm.create_model(tag, pretrained=True, **overrides)
        raise ModelLoadError(tag, "<tag>", f"no published weights under this tag; published: {sorted(PUBLISHED)}")
    folder = card_folder(tag)
    if not (folder / CONFIG_NAME).is_file():  # a pip-installed package without the bundled model_cards/
        folder = hub_folder(f"{HUB_ORG}/{tag}", None)
    return load_folder(folder, **overrides)


def load_timm_weights(model: nn.Module, file: str | Path) -> nn.Module:
    """Load a timm/zoo ViT ``.safetensors`` state dict into ``model`` (position embedding resampled if needed;
    the classifier is skipped when its class count differs, so a fine-tune keeps its new head)."""

    state = checkpoint_filter_fn(read_weights(Path(file)), model)
    own = model.state_dict()
    for k in ("head.weight", "head.bias"):
        if k in state and k in own and state[k].shape != own[k].shape:
            state[k] = own[k]
    load_state_strict(model, state, str(file))
    return model


PUSH_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "*.png", "*.json", "*.jsonl", "*.yaml")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload a model folder to the hub with ``HfApi``; returns the commit (or pull request) URL.

    The token is ``huggingface_hub.get_token()``'s: ``HF_TOKEN``, else the one ``hf auth login`` saved. ``revision``
    commits to that branch (created from main if missing); ``create_pr`` opens a pull request instead of committing.

    Refuses before any network call when offline (``HF_HUB_OFFLINE``), without a token, or when the folder does
    not load (weights are verified against their stored hash first).
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise PublishError(repo_id, "<repo_id>", f"not a valid hub repo id (ORG/NAME): {e}") from None
    if "/" not in repo_id:
        raise PublishError(repo_id, "<repo_id>", "expected ORG/NAME")
    load_folder(folder)  # a ModelLoadError names the broken file
    if not (folder / "README.md").is_file():
        raise PublishError(str(folder / "README.md"), "<file>", "no model card: write the folder with `zoo export`")
    if hub_offline(constants) or _env_true("HF_HUB_OFFLINE"):
        raise PublishError(f"hf-hub:{repo_id}", "HF_HUB_OFFLINE", "offline mode is set: cannot upload; unset it")
    token = get_token() or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        msg = "no token: set HF_TOKEN (write scope) or run `hf auth login`"
        raise PublishError(f"hf-hub:{repo_id}", "HF_TOKEN", msg)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
        allow_patterns=list(PUSH_FILES),
        ignore_patterns=[".*"],
        commit_message=message or f"Upload {folder.name} with zoo push",
    )
    return str(getattr(info, "pr_url", None) or getattr(info, "commit_url", info))
