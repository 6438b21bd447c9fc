"""Words for the plugin's messages (no Qt): names short enough for a one-line notification."""

from __future__ import annotations

from typing import Any


def short_name(path: Any, limit: int = 24) -> str:
    """A file or layer name short enough for a one-line notification (the middle elided)."""
    name = str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or str(path)
    return name if len(name) <= limit else name[: limit // 2 - 1] + "\u2026" + name[-(limit // 2):]
