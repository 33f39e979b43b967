"""A contact sheet: a grid of samples (input images → output image) with their prompt and answer."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from .sample import WorldSample

_PAD = 8  # pixels around and between the pieces of a cell
_ARROW_PX = 24  # width of the arrow between input and output
_FONT_PX = 12
_CAPTION_LINES = 9  # captions longer than this are cut, so every cell has the same height
_SHEET_BG = (235, 235, 235)
_INK = (20, 20, 20)


def contact_sheet(samples: Sequence[WorldSample], *, columns: int = 4, thumb_px: int = 128) -> Image.Image:
    """One image showing ``samples`` in a grid, each with its instruction and answer wrapped below.

    Args:
        samples: the samples to show (at least one).
        columns: cells per row.
        thumb_px: side of each image in the sheet (images are scaled without smoothing).

    Returns:
        An RGB image.
    """
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    if columns < 1 or thumb_px < 16:
        raise ValueError(f"columns={columns} must be >= 1 and thumb_px={thumb_px} >= 16")
    font = ImageFont.load_default(size=_FONT_PX)
    cell_w = 2 * thumb_px + _ARROW_PX + 2 * _PAD
    line_h = _FONT_PX + 3
    cell_h = thumb_px + 2 * _PAD + _CAPTION_LINES * line_h
    chars_per_line = max(10, int((cell_w - 2 * _PAD) / font.getlength("n")))
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), _SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        x0, y0 = (i % columns) * cell_w + _PAD, (i // columns) * cell_h + _PAD
        inputs = sample.input_images()
        if inputs:
            sheet.paste(inputs[0].resize((thumb_px, thumb_px), Image.Resampling.NEAREST), (x0, y0))
            mid = y0 + thumb_px // 2
            draw.line([(x0 + thumb_px + 4, mid), (x0 + thumb_px + _ARROW_PX - 4, mid)], fill=_INK, width=2)
            draw.polygon([(x0 + thumb_px + _ARROW_PX - 4, mid), (x0 + thumb_px + _ARROW_PX - 10, mid - 5),
                          (x0 + thumb_px + _ARROW_PX - 10, mid + 5)], fill=_INK)
            out_x = x0 + thumb_px + _ARROW_PX
        else:
            out_x = x0
        sheet.paste(sample.target_image().resize((thumb_px, thumb_px), Image.Resampling.NEAREST), (out_x, y0))
        caption = _caption(sample, chars_per_line)
        draw.multiline_text((x0, y0 + thumb_px + _PAD), caption, fill=_INK, font=font, spacing=3)
    return sheet


def _caption(sample: WorldSample, width: int) -> str:
    kind = sample.meta.get("kind", "")
    lines = textwrap.wrap(f"[{sample.scenario}/{kind}] {sample.instruction}", width)
    lines += textwrap.wrap(f"=> {sample.answer}", width)
    if len(lines) > _CAPTION_LINES:
        lines = lines[: _CAPTION_LINES - 1] + [lines[_CAPTION_LINES - 1][: width - 3] + "..."]
    return "\n".join(lines)
