"""The data package's error: invalid or missing data, or an invalid data config value."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Invalid or missing data, or an invalid data config value.

    Attributes:
        path: The file or folder at fault, if any.
        field: The config field at fault (e.g. ``"data.name"``), if any.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.field = field
