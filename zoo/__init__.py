"""growzoo: efficient Vision Transformers for timm. ``import zoo`` registers every ``zoo_*`` model with timm."""

from zoo import models
from zoo.models import ZooViT

__version__ = "0.1.0"
__all__ = ["ZooViT", "models", "__version__"]
