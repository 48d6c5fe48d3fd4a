"""The toy coloured-shapes data of the image quickstart and its score.

>>> import anneal.shapes
>>> anneal.shapes.write_imagefolder("shapes", n=480)       # PNGs + metadata.jsonl
>>> anneal.shapes.score(images, ["a red circle", ...])     # share matching their prompt
>>> anneal.shapes.evaluate(images, prompts)                # {"images", "color", "shape", "both"}
>>> anneal.shapes.recommended()["steps"]                   # the tiny-shapes preset's settings
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

from anneal._anneal import (
    shapes_chance,
    shapes_evaluate,
    shapes_grid,
    shapes_prompts,
    shapes_recommended,
    shapes_score,
    shapes_write_imagefolder,
)

if TYPE_CHECKING:
    from anneal._anneal import ShapesRecommended, ShapesScore

__all__ = ["write_imagefolder", "score", "evaluate", "chance", "prompts", "recommended", "grid"]


def prompts() -> list[str]:
    """Every colour x shape caption, e.g. "a red circle", in the order the datasets
    cycle through them."""
    return shapes_prompts()


def recommended() -> ShapesRecommended:
    """The `tiny-shapes` preset's recommended training and sampling settings (steps,
    batch_size, learning_rate, warmup_steps, schedule, snr_gamma, train_text_encoder,
    caption_dropout, scheduler, inference_steps, guidance_scale) and its resolution."""
    return shapes_recommended()


def write_imagefolder(dir: str | os.PathLike[str], n: int = 480, size: int = 32, seed: int = 0) -> None:
    """Writes `n` captioned `size` x `size` pictures and `metadata.jsonl` into `dir`."""
    shapes_write_imagefolder(os.fspath(dir), n, size, seed)


def score(images: Sequence[Any], prompts: Sequence[str]) -> float:
    """The share of `images` (PIL images or PNG bytes) whose dominant colour and shape
    match the prompt at the same index."""
    return shapes_score(list(images), list(prompts))


def evaluate(images: Sequence[Any], prompts: Sequence[str]) -> ShapesScore:
    """The shares of `images` (PIL images or PNG bytes) whose dominant colour, whose
    shape, and whose colour and shape both match the prompt at the same index, each
    measured on the pixels: `{"images": n, "color": .., "shape": .., "both": ..}`."""
    return shapes_evaluate(list(images), list(prompts))


def chance() -> ShapesScore:
    """What a painter that ignores its prompt scores on average: colour 1/4, shape 1/3,
    both 1/12 (`images` 0)."""
    return shapes_chance()


def grid(rows: Sequence[Sequence[Any]], scale: int = 1) -> bytes:
    """One PNG (bytes) holding `rows[r][c]` (PIL images or PNG bytes) row by row on a
    white canvas, each picture enlarged `scale` times (nearest neighbour: small
    pictures stay sharp). Needs no Pillow."""
    return shapes_grid([list(r) for r in rows], scale)
