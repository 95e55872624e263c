"""growzoo: efficient Vision Transformers for timm.

``import zoo`` registers every ``zoo_*`` model with timm and exposes the public subpackages (``zoo.hub.load_model``,
``zoo.models``, ...). The layout, in the order data flows, is in README.md ("Layout").
"""

from zoo import hub, models
from zoo.models import ZooViT
from zoo.version import __version__

__all__ = ["ZooViT", "hub", "models", "__version__"]
