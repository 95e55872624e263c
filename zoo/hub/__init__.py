"""Hub folders (timm's layout, load and save with safetensors only) and push.

The public face of the hub code: ``zoo.hub.load_model`` and the other names below.
"""

from zoo.hub.folders import (
    CONFIG_NAME,
    PUSH_FILES,
    SOURCE_KEYS,
    WEIGHTS_NAME,
    ModelLoadError,
    PublishError,
    hub_folder,
    json_safe,
    load_folder,
    load_model,
    load_state_strict,
    load_timm_weights,
    model_config,
    push_folder,
    read_config,
    read_metadata,
    read_weights,
    save_model_folder,
    state_hash,
    weights_hash,
)

__all__ = [
    "CONFIG_NAME",
    "ModelLoadError",
    "PUSH_FILES",
    "PublishError",
    "SOURCE_KEYS",
    "WEIGHTS_NAME",
    "hub_folder",
    "json_safe",
    "load_folder",
    "load_model",
    "load_state_strict",
    "load_timm_weights",
    "model_config",
    "push_folder",
    "read_config",
    "read_metadata",
    "read_weights",
    "save_model_folder",
    "state_hash",
    "weights_hash",
]
