"""Glyph references: the words an instruction quotes, rendered as an image the DiT reads beside the text.

A small DiT conditioned on the MLLM's hidden states alone learns colours and shapes long before it learns
to spell: on the nano world, text-rendering training leaves it blind to which word was asked for
(``benchmarks/nano_text_signal.py``). Given a rendering of the words, it only has to copy them, the way it
copies an input image in an edit. So a model trained with glyph references gets, for every text-to-image
call whose instruction quotes words, one more reference image through the DiT's in-context path (never
shown to the MLLM): the quoted words laid out and drawn by a world preset's rules and font.

Training uses the target's own word boxes; inference plans a layout by the same rules. The world places
words before any object, so a planned layout is a draw from exactly the training distribution of word
boxes, and the DiT then draws objects around the words as it learned to.
"""

from __future__ import annotations

import random
import re

from PIL import Image

from .world.layout import place
from .world.render import render
from .world.scene import Scene, Word, get_preset

# A quoted word or phrase, as the world's prompts write them ("cat"); at most 40 characters.
QUOTED_TEXT = re.compile(r'"([^"\n]{1,40})"')


def quoted_texts(instruction: str) -> list[str]:
    """The texts ``instruction`` quotes, in order, each once."""
    return list(dict.fromkeys(QUOTED_TEXT.findall(instruction)))


def render_glyphs(words: tuple[Word, ...], width: int, height: int, canvas_px: int) -> Image.Image:
    """The words alone on the world's blank canvas (``canvas_px`` square), resized to ``width`` × ``height``."""
    image = render(Scene(words=words), canvas_px)
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)


def plan_glyphs(instruction: str, preset: str, width: int, height: int, seed: str | int | None) -> Image.Image | None:
    """The glyph reference of ``instruction`` under the world preset ``preset``, or ``None`` when it quotes no
    text, more texts than the preset writes in one image, or texts that do not fit its canvas.

    Args:
        seed: fixes the layout (``None``: a fresh one).
    """
    texts = quoted_texts(instruction)
    config = get_preset(preset)
    if not texts or len(texts) > config.max_words:
        return None
    try:
        _, words = place(config, random.Random(seed), [], texts)
    except ValueError:  # a text too long for the canvas, or no room left
        return None
    return render_glyphs(tuple(words), width, height, config.canvas_px)
