"""A contact sheet: each query and its neighbours side by side, with scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from simclr.atomic import atomic_write_bytes
from simclr.data.decode import DECODE_ERRORS, to_rgb
from simclr.search.query import QueryResult

CAPTION = 16


def _thumbnail(path: str, size: int) -> Image.Image:
    try:
        with Image.open(path) as image:
            image = to_rgb(ImageOps.exif_transpose(image))
            return ImageOps.pad(image, (size, size), color=(255, 255, 255))
    except DECODE_ERRORS:
        return Image.new("RGB", (size, size), (200, 200, 200))


def neighbour_grid(results: Sequence[QueryResult], out: Path, thumbnail: int = 96) -> Path:
    """Write a PNG with one row per query: the query (left, outlined), then its neighbours with rank and score."""
    columns = 1 + max((len(result.neighbours) for result in results), default=0)
    cell = thumbnail + 8
    sheet = Image.new("RGB", (columns * cell, len(results) * (cell + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, result in enumerate(results):
        top = row * (cell + CAPTION)
        sheet.paste(_thumbnail(result.query, thumbnail), (4, top + 4))
        draw.rectangle((2, top + 2, thumbnail + 5, top + thumbnail + 5), outline=(220, 40, 40), width=2)
        draw.text((4, top + cell), "query" if not result.error else "unreadable", fill="black")
        for neighbour in result.neighbours:
            left = neighbour.rank * cell
            sheet.paste(_thumbnail(neighbour.path, thumbnail), (left + 4, top + 4))
            draw.text((left + 4, top + cell), f"#{neighbour.rank}  {neighbour.score:.3f}", fill="black")

    def write(file) -> None:
        sheet.save(file, format="PNG")

    atomic_write_bytes(out, write)
    return Path(out)
