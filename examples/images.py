"""examples.thumbnail's code: Pillow, run in a worker's child process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

import jobq
from examples.jobs import inside_output


def thumbnail(ctx: jobq.SyncContext, source: str, size: int = 128, name: str | None = None
              ) -> dict[str, Any]:
    if not 1 <= size <= 4096:
        raise jobq.PermanentJobError("size must be between 1 and 4096")
    target = inside_output(name or f"{Path(source).stem}-{size}.png")
    ctx.progress(10, stage="loading")
    try:
        with Image.open(source) as image:
            image.load()
            original = image.size
            ctx.progress(50, stage="resizing")
            image.thumbnail((size, size))
            image.save(target, format="PNG")
            made = image.size
    except (FileNotFoundError, UnidentifiedImageError) as exc:
        raise jobq.PermanentJobError(f"cannot read {source}: {exc}") from exc
    return {"path": str(target), "original": list(original), "size": list(made)}
