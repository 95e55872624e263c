"""Model folders (timm's hub layout: ``config.json`` + ``model.safetensors``): save, and load without pickle.

Loading never calls ``torch.load``: weights come only from safetensors and configuration only from JSON, whether the
source is a local folder, a hub repo (through the hub cache, so ``HF_HUB_OFFLINE=1`` works), or a bare safetensors
file of a timm/zoo ViT. Every failure names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; names the file and the field."""

    def __init__(self, source: str, field: str, message: str):
        self.source, self.field = source, field
        super().__init__(f"{source}: {field}: {message}")


def weights_hash(model: nn.Module) -> str:
    """sha256 over parameter names, shapes and bytes (stored in safetensors metadata: the format has no checksum)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    for k in ("file", "source", "hf_hub_id", "url", "state_dict", "custom_load"):
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


def save_model_folder(model: nn.Module, folder: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (each atomically: temp file + rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    import zoo

    meta = {"architecture": cfg["architecture"], "zoo_version": zoo.__version__, "weights_sha256": weights_hash(model)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tmp_w = folder / f".{WEIGHTS_NAME}.tmp"
    save_model(model, str(tmp_w), metadata=meta)
    _replace_atomic(tmp_w, folder / WEIGHTS_NAME)
    tmp_c = folder / f".{CONFIG_NAME}.tmp"
    tmp_c.write_text(json.dumps(cfg, indent=2) + "\n")
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(str(path), "<file>", "weights file not found (only safetensors is accepted)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(str(path), "<file>", f"corrupt or truncated safetensors: {e}") from None


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
    model.load_state_dict(state, strict=True)


def _build(arch: str, model_args: dict, source: str, **overrides) -> nn.Module:
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
    cfg = read_config(cfg_path)
    args = dict(cfg.get("model_args", {}))
    if "num_classes" in cfg:
        args.setdefault("num_classes", cfg["num_classes"])
    model = _build(cfg["architecture"], args, str(cfg_path))
    load_state_strict(model, read_weights(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    pcfg = dict(cfg.get("pretrained_cfg", {}))
    pcfg.update(architecture=cfg["architecture"], file=str(folder), source="local-dir")
    model.pretrained_cfg = pcfg
    if "num_classes" in overrides and overrides["num_classes"] != model.num_classes:
        model.reset_classifier(overrides["num_classes"])
    return model


def hub_folder(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the cache, offline) a hub repo's config and weights; returns the local folder."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        cfg = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except LocalEntryNotFoundError as e:
        raise ModelLoadError(
            f"hf-hub:{repo_id}", "<repo>", f"not in the local hub cache and the hub is unreachable or offline: {e}"
        ) from None
    return Path(cfg).parent


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
    if timm.is_model(source):
        return timm.create_model(source, **overrides)
    raise ModelLoadError(source, "<source>", "not a folder, local-dir:/hf-hub: id, or registered model name")


def load_timm_weights(model: nn.Module, file: str | Path) -> nn.Module:
    """Load a timm/zoo ViT ``.safetensors`` state dict into ``model`` (position embedding resampled if needed;
    the classifier is skipped when its class count differs, so a fine-tune keeps its new head)."""
    from zoo.models.zoo_vit import checkpoint_filter_fn

    state = checkpoint_filter_fn(read_weights(Path(file)), model)
    own = model.state_dict()
    for k in ("head.weight", "head.bias"):
        if k in state and k in own and state[k].shape != own[k].shape:
            state[k] = own[k]
    load_state_strict(model, state, str(file))
    return model
