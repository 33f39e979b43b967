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

Object marks extend the reference to a layout (as layout-grounded generators such as LMD and GLIGEN do):
the same DiT is blind to counts and spatial relations (``benchmarks/nano_dit_fit.py --swap-samples``), so
a reference with ``objects`` also shows a light grey box wherever an object of the instruction goes. The
box carries no shape or colour (those stay the DiT's to read from the text); it says how many objects
there are, where, and how large. The planner reads the counts, shapes and one spatial relation from the
instruction (:func:`planned_objects`) and places them by the world's rules, as the world placed them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .world.composition import place_related
from .world.knowledge import NUMBER_NAMES
from .world.layout import compose
from .world.phrasing import RELATION_PHRASES, plural
from .world.render import render
from .world.scene import Scene, SceneObject, Word, WorldConfig, get_preset

# A quoted word or phrase, as the world's prompts write them ("cat"); at most 40 characters.
QUOTED_TEXT = re.compile(r'"([^"\n]{1,40})"')

# Light grey: in no preset's palette (the world's gray is 140), so a mark never reads as an object.
OBJECT_MARK_RGB = (200, 200, 200)

_ONE = {"a": 1, "an": 1, "one": 1, "single": 1}
_COUNTS = {**{name: n for n, name in enumerate(NUMBER_NAMES) if n}, **{str(n): n for n in range(1, 10)}, **_ONE}
_RELATION_WORDS = {tuple(phrase.split()): name for name, phrases in RELATION_PHRASES.items() for phrase in phrases}
_RIDDLE_WORDS = {"each", "many", "number", "plus", "minus", "times"}
_MAX_PREFIX = 4  # words looked back from a shape noun for its count ("a single dark red star" is as far as it goes)


def quoted_texts(instruction: str) -> list[str]:
    """The texts ``instruction`` quotes, in order, each once."""
    return list(dict.fromkeys(QUOTED_TEXT.findall(instruction)))


@dataclass(frozen=True)
class ObjectPlan:
    """What a layout needs from an instruction: one shape per object, in the order named, and at most one
    relation ``(name, i, j)``: object ``i`` is ``name`` object ``j``."""

    shapes: tuple[str, ...]
    relation: tuple[str, int, int] | None = None


def planned_objects(instruction: str, config: WorldConfig) -> ObjectPlan | None:
    """The objects ``instruction`` names in the world ``config``, or ``None`` when it names none or names them in
    a way the planner cannot count (a plural without a number, "as many … as": left to the DiT).

    Quoted texts are words to write, not objects. A relation is kept between exactly two objects; ``"B with A
    above it"`` relates the second to the first.
    """
    unquoted = QUOTED_TEXT.sub(" ", instruction.lower())
    tokens = re.findall(r"[a-z]+|\d+", unquoted)
    nouns = {shape: 1 for shape in config.shapes} | {plural(shape): 0 for shape in config.shapes}
    shapes: list[str] = []
    groups: list[tuple[int, int]] = []  # (token index of the noun, count)
    counted: set[int] = set()  # token indices of the numbers that count a noun
    for i, token in enumerate(tokens):
        if token not in nouns:
            continue
        start = max(groups[-1][0] + 1 if groups else 0, i - _MAX_PREFIX)  # never a count of the previous noun
        at = next((j for j in range(i - 1, start - 1, -1) if tokens[j] in _COUNTS), None)
        count = None if at is None else _COUNTS[tokens[at]]
        if at is not None:
            counted.add(at)
        singular = nouns[token] == 1
        if count is None:
            if not singular:
                return None  # "triangles" with no number: not for a planner to guess
            count = 1
        if singular != (count == 1):
            return None  # "two star", "one stars": not the world's grammar
        shape = token if singular else next(s for s in config.shapes if plural(s) == token)
        groups.append((i, count))
        shapes.extend([shape] * count)
    if not shapes or len(shapes) > config.max_objects:
        return None
    # A number that counts no shape, or "each": arithmetic or a riddle ("six minus two stars", "a star for each
    # leg of a horse"), whose count is the MLLM's to work out, not a layout's to take literally.
    if any((t in _COUNTS and t not in _ONE or t in _RIDDLE_WORDS) and j not in counted for j, t in enumerate(tokens)):
        return None
    relations = _relations(tokens)
    if not relations:
        return ObjectPlan(tuple(shapes))
    if len(relations) != 1 or len(shapes) != 2 or len(groups) != 2:
        return None
    at, name = relations[0]
    first, second = groups[0][0], groups[1][0]
    if second < at:  # "B with A above it": the relation follows both nouns and relates the second
        return ObjectPlan(tuple(shapes), (name, 1, 0))
    if first < at < second:
        return ObjectPlan(tuple(shapes), (name, 0, 1))
    return None


def _relations(tokens: list[str]) -> list[tuple[int, str]]:
    """(token index, relation) of each relation phrase, the longest phrase where several overlap
    ("to the left of" is one relation, not also "left of")."""
    found, i = [], 0
    while i < len(tokens):
        match = max((key for key in _RELATION_WORDS if tuple(tokens[i:i + len(key)]) == key), key=len, default=None)
        if match is None:
            i += 1
            continue
        found.append((i, _RELATION_WORDS[match]))
        i += len(match)
    return found


def render_glyphs(
    words: tuple[Word, ...], width: int, height: int, canvas_px: int, objects: Sequence[SceneObject] = ()
) -> Image.Image:
    """The words alone on the world's blank canvas (``canvas_px`` square), and a light grey box where each of
    ``objects`` is, resized to ``width`` × ``height``."""
    image = render(Scene(words=words), canvas_px)
    if objects:
        draw = ImageDraw.Draw(image)
        for obj in objects:
            x0, y0, x1, y1 = (round(v * canvas_px) for v in obj.box())
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=OBJECT_MARK_RGB)
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)


def _glyph_content(
    instruction: str, config: WorldConfig, objects: bool
) -> tuple[list[str], ObjectPlan | None] | None:
    """The texts and (with ``objects``) the object plan a glyph reference of ``instruction`` shows, or ``None``
    when it shows nothing: no quoted text and no object plan, or more texts than the world writes in one image."""
    texts = quoted_texts(instruction)
    if len(texts) > config.max_words:
        return None
    plan = planned_objects(instruction, config) if objects else None
    if not texts and plan is None:
        return None
    return texts, plan


def has_glyph_reference(instruction: str, preset: str, objects: bool = False) -> bool:
    """Whether :func:`plan_glyphs` has something to show for ``instruction`` (it may still find no room for it)."""
    return _glyph_content(instruction, get_preset(preset), objects) is not None


def plan_glyphs(
    instruction: str, preset: str, width: int, height: int, seed: str | int | None, objects: bool = False
) -> Image.Image | None:
    """The glyph reference of ``instruction`` under the world preset ``preset``, or ``None`` when it has nothing
    to show: no quoted text (and, with ``objects``, no object the planner can place), more texts than the
    preset writes in one image, or texts that do not fit its canvas.

    Args:
        seed: fixes the layout (``None``: a fresh one).
        objects: also mark where each object the instruction names goes (:func:`planned_objects`); a model
            trained without object marks must not be given them.
    """
    config = get_preset(preset)
    content = _glyph_content(instruction, config, objects)
    if content is None:
        return None
    texts, plan = content
    # The colour of a mark is never drawn; the world's layout only needs (shape, colour) items to place.
    items = [(shape, config.colours[0]) for shape in (plan.shapes if plan else ())]
    rng = random.Random(seed)
    try:
        if plan is not None and plan.relation is not None:
            name, i, j = plan.relation
            scene = place_related(rng, config, [items[i], items[j]], name, texts)
        else:
            scene = compose(config, rng, items, texts)
    except ValueError:  # a text too long for the canvas, or no room left
        return None
    return render_glyphs(scene.words, width, height, config.canvas_px, scene.objects)
