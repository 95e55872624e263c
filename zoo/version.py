"""The package version (one place: ``zoo.__version__``, model-folder metadata and ``zoo --version`` read it)."""

__version__ = "0.1.0"
