"""Every zoo model family; importing this module registers them all with timm (timm registers on import)."""

from zoo.models.zoo_msvit import ZooMSViT
from zoo.models.zoo_revvit import ZooRevViT
from zoo.models.zoo_vit import ZooViT

__all__ = ["ZooMSViT", "ZooRevViT", "ZooViT"]
