"""`PngBytes`: the PNG of a plot, as `bytes` that Jupyter displays as an image."""

from __future__ import annotations


class PngBytes(bytes):
    """PNG file bytes (`open("x.png", "wb").write(png)` saves them). In Jupyter, a cell
    that ends with one shows the image."""

    __slots__ = ()

    def _repr_png_(self) -> bytes:
        return bytes(self)

    def __repr__(self) -> str:
        return f"PngBytes({len(self)} bytes)"
