"""The toy coloured-shapes data of the image quickstart and its score.

>>> import anneal.shapes
>>> anneal.shapes.write_imagefolder("shapes", n=480)       # PNGs + metadata.jsonl
>>> anneal.shapes.score(images, ["a red circle", ...])     # share matching their prompt
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from anneal._anneal import shapes_score, shapes_write_imagefolder

__all__ = ["write_imagefolder", "score", "prompts"]

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def prompts() -> list[str]:
    """Every colour x shape caption, e.g. "a red circle"."""
    return [f"a {c} {s}" for c in COLORS for s in SHAPES]


def write_imagefolder(dir: str | os.PathLike[str], n: int = 480, size: int = 32, seed: int = 0) -> None:
    """Writes `n` captioned `size` x `size` pictures and `metadata.jsonl` into `dir`."""
    shapes_write_imagefolder(os.fspath(dir), n, size, seed)


def score(images: Sequence[Any], prompts: Sequence[str]) -> float:
    """The share of `images` (PIL images or PNG bytes) whose dominant colour and shape
    match the prompt at the same index."""
    return shapes_score(list(images), list(prompts))
