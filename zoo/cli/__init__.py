"""The ``zoo`` command: one module per command group; ``python -m zoo.cli`` runs it too."""

from zoo.cli.main import main

__all__ = ["main"]
