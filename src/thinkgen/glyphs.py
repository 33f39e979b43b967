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

With ``shapes``, an object mark is the silhouette of the object's shape in that grey rather than its box: the
DiT then need not tie each shape word to a place (the binding a box leaves it), only read the colours.

Edit marks do the same for edits, as mask-guided editors do: beside the input image, the DiT reads where
the edit acts (:class:`EditMarks`): a darker grey where something of the input goes away, the object mark's
grey where an object goes, and the words the edit writes. Without them the same DiT copies its input well
but often changes the wrong object or none. Training shows the difference between input and target scene
(:func:`edit_marks`); inference reads the edit from the instruction and finds what it names in the input
image with the world's detector (:func:`planned_edit`), placing new and moved objects by the world's rules.
Each object an edit draws keeps its shape (:class:`ObjectMark`), for silhouettes, and an object it moves keeps
its colour too, as the input shows it: with ``colours``, a moved object's silhouette is drawn in that colour,
so the DiT copies it to its new place rather than carrying the colour over from the erased one, which it
binds as poorly as it binds colour words to objects.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .world.composition import place_related
from .world.knowledge import NUMBER_NAMES
from .world.detect import DetectedObject, Detection, DetectorConfig, WorldDetector
from .world.geometry import holds_clearly
from .world.layout import Box, centred_box, compose, place_among, sample_size, word_box_size
from .world.phrasing import RELATION_PHRASES, plural
from .world.render import render
from .world.scene import Scene, SceneObject, Word, WorldConfig, get_preset

# Quotes pair up in order ("cat" and "dog"); a quoted text is drawn when it has 1 to 40 characters and no
# control character or line break (a sampled MLLM can quote one, and the font cannot lay it out).
QUOTED_TEXT = re.compile(r'"([^"]*)"')
_DRAWABLE_TEXT = re.compile(r'[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,40}')

# Light grey: in no preset's palette (the world's gray is 140), so a mark never reads as an object.
OBJECT_MARK_RGB = (200, 200, 200)

_ONE = {"a": 1, "an": 1, "one": 1, "single": 1}
_COUNTS = {**{name: n for n, name in enumerate(NUMBER_NAMES) if n}, **{str(n): n for n in range(1, 10)}, **_ONE}
_RELATION_WORDS = {tuple(phrase.split()): name for name, phrases in RELATION_PHRASES.items() for phrase in phrases}
_RIDDLE_WORDS = {"each", "many", "number", "plus", "minus", "times"}
_MAX_PREFIX = 4  # words looked back from a shape noun for its count ("a single dark red star" is as far as it goes)


def quoted_texts(instruction: str) -> list[str]:
    """The drawable texts ``instruction`` quotes, in order, each once."""
    return list(dict.fromkeys(t for t in QUOTED_TEXT.findall(instruction) if _DRAWABLE_TEXT.fullmatch(t)))


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
    words: tuple[Word, ...],
    width: int,
    height: int,
    canvas_px: int,
    objects: Sequence[SceneObject] = (),
    shapes: bool = False,
) -> Image.Image:
    """The words alone on the world's blank canvas (``canvas_px`` square), and a light grey box where each of
    ``objects`` is (with ``shapes``, its silhouette instead), resized to ``width`` × ``height``."""
    if shapes:
        return _sized(render(Scene(tuple(objects), words), canvas_px, object_rgb=OBJECT_MARK_RGB), width, height)
    image = render(Scene(words=words), canvas_px)
    _fill_boxes(image, [obj.box() for obj in objects], OBJECT_MARK_RGB)
    return _sized(image, width, height)


def _fill_boxes(image: Image.Image, boxes: Sequence[Box], fill: tuple[int, int, int]) -> None:
    draw, side = ImageDraw.Draw(image), image.width
    for box in boxes:
        x0, y0, x1, y1 = (round(v * side) for v in box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)


def _sized(image: Image.Image, width: int, height: int) -> Image.Image:
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
    instruction: str,
    preset: str,
    width: int,
    height: int,
    seed: str | int | None,
    objects: bool = False,
    shapes: bool = False,
) -> Image.Image | None:
    """The glyph reference of ``instruction`` under the world preset ``preset``, or ``None`` when it has nothing
    to show: no quoted text (and, with ``objects``, no object the planner can place), more texts than the
    preset writes in one image, or texts that do not fit its canvas.

    Args:
        seed: fixes the layout (``None``: a fresh one).
        objects: also mark where each object the instruction names goes (:func:`planned_objects`); a model
            trained without object marks must not be given them.
        shapes: mark each object with the silhouette of its shape rather than its box (as the model was
            trained).
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
    return render_glyphs(scene.words, width, height, config.canvas_px, scene.objects, shapes)


# ---- edit marks -------------------------------------------------------------------------------------------

# Darker than an object mark: where something of the input image goes away. A mark image is never copied
# as a scene, so this grey may sit near a palette's gray (140); a light grey (230) was too faint a signal:
# a DiT trained with it left half the objects it marked in place.
ERASE_MARK_RGB = (160, 160, 160)

_REMOVE_VERBS = (("remove",), ("delete",), ("erase",), ("take", "away"), ("get", "rid", "of"))
_ADD_VERBS = (("add",), ("put",), ("place",), ("also", "draw"), ("draw",), ("write",))
_RECOLOUR_VERBS = {"make", "recolour", "recolor", "paint", "turn", "change", "colour", "color"}
_REPLACE_WORDS = {"with", "into", "for"}  # "replace A with B", "turn A into B", "swap A for B"
_MAX_EDIT_TOKENS = 16  # the world's longest edit ("shift the black triangle so it is to the left of …") fits


@dataclass(frozen=True)
class ObjectMark:
    """Where an edit draws an object of ``shape``: its ``box`` in canvas fractions; ``colour``, the colour of
    an object the edit moves, as the input holds it (empty for a new object, whose colour the text gives)."""

    shape: str
    box: Box
    colour: str = ""


@dataclass(frozen=True)
class EditMarks:
    """Where an edit changes its input image: ``erased``, boxes (canvas fractions) where something of the input
    goes away; ``drawn``, the objects the edit draws; ``words``, the words the edit writes."""

    erased: tuple[Box, ...] = ()
    drawn: tuple[ObjectMark, ...] = ()
    words: tuple[Word, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.erased or self.drawn or self.words)


def edit_marks(source: Scene, target: Scene, canvas_px: int) -> EditMarks:
    """The marks of the edit that turns ``source`` into ``target`` (what training shows): each object or word
    of one that the other does not hold at the same place and size."""

    def lacking(items: Sequence, others: Sequence) -> list:  # items not in others, counted as multisets
        left = Counter(others)
        out = []
        for item in items:
            if left[item]:
                left[item] -= 1
            else:
                out.append(item)
        return out

    old_words = lacking(source.words, target.words)
    gone = lacking(source.objects, target.objects)
    # An object that goes away and comes back elsewhere with its shape and colour was moved.
    movable = Counter((o.shape, o.colour) for o in gone)
    drawn = []
    for o in lacking(target.objects, source.objects):
        moved = movable[o.shape, o.colour] > 0
        if moved:
            movable[o.shape, o.colour] -= 1
        drawn.append(ObjectMark(o.shape, o.box(), o.colour if moved else ""))
    # An object recoloured or replaced in place is drawn over, not erased.
    drawn_boxes = {m.box for m in drawn}
    erased = [box for o in gone if (box := o.box()) not in drawn_boxes]
    erased += [w.box for w in Detection.from_scene(Scene(words=tuple(old_words)), canvas_px).words]
    return EditMarks(tuple(erased), tuple(drawn), tuple(lacking(target.words, source.words)))


def render_edit_marks(
    marks: EditMarks, width: int, height: int, canvas_px: int, shapes: bool = False, colours: bool = False
) -> Image.Image:
    """``marks`` on the world's blank canvas (``canvas_px`` square): erased boxes in :data:`ERASE_MARK_RGB`,
    drawn objects as boxes in :data:`OBJECT_MARK_RGB` (with ``shapes``, as silhouettes of their shape; with
    ``colours`` too, a moved object's silhouette in its own colour), new words as glyphs on white on top;
    resized to ``width`` × ``height``."""
    if colours and not shapes:
        raise ValueError("colours draws moved objects' silhouettes in their colour: set shapes too")
    image = Image.new("RGB", (canvas_px, canvas_px), "white")
    _fill_boxes(image, marks.erased, ERASE_MARK_RGB)
    if shapes:
        for in_colour, rgb in ((False, OBJECT_MARK_RGB), (True, None)):
            objects = tuple(SceneObject(m.shape, m.colour, (m.box[0] + m.box[2]) / 2, (m.box[1] + m.box[3]) / 2,
                                        max(m.box[2] - m.box[0], m.box[3] - m.box[1]))
                            for m in marks.drawn if bool(colours and m.colour) == in_colour)
            if objects:  # an empty scene would be rendered and pasted for nothing, once per training edit
                silhouettes = render(Scene(objects), canvas_px, object_rgb=rgb)
                image.paste(silhouettes, mask=silhouettes.convert("L").point(lambda v: 255 if v < 255 else 0))
    else:
        _fill_boxes(image, [m.box for m in marks.drawn], OBJECT_MARK_RGB)
    if marks.words:
        # Each new word on white of its own box, even over an erased old one: black letters on the dark erase
        # grey read so poorly that a DiT trained on them wrote the old word and the new one over each other.
        scene = Scene(words=marks.words)
        _fill_boxes(image, [w.box for w in Detection.from_scene(scene, canvas_px).words], (255, 255, 255))
        words = render(scene, canvas_px)
        image.paste(words, mask=words.convert("L").point(lambda v: 255 if v < 250 else 0))
    return _sized(image, width, height)


@dataclass(frozen=True)
class _Mention:
    """A noun phrase of an edit: ``count`` objects (``None``: a definite "the …") of ``shape`` and ``colour``,
    ending before token ``end``."""

    shape: str
    colour: str | None
    count: int | None
    end: int


def _colour_names(config: WorldConfig) -> dict[str, str]:
    """The colour words of ``config``'s prompts and the colour each names ("grey" as well as "gray")."""
    return {c: c for c in config.colours} | ({"grey": "gray"} if "gray" in config.colours else {})


def _mentions(tokens: list[str], config: WorldConfig) -> list[_Mention]:
    colours = _colour_names(config)
    nouns = {shape: shape for shape in config.shapes} | {plural(shape): shape for shape in config.shapes}
    found: list[_Mention] = []
    for i, token in enumerate(tokens):
        if token not in nouns:
            continue
        before = tokens[max(found[-1].end if found else 0, i - _MAX_PREFIX):i]
        colour = next((colours[t] for t in reversed(before) if t in colours), None)
        count = next((_COUNTS[t] for t in reversed(before) if t in _COUNTS), None)
        end, after = i + 1, tokens[i + 1:i + 4]
        if after[:2] in (["that", "is"], ["that", "are"]) and len(after) == 3 and after[2] in colours:
            colour, end = colours[after[2]], end + 3  # "a circle that is red"
        elif after[:1] in (["coloured"], ["colored"]) and len(after) > 1 and after[1] in colours:
            colour, end = colours[after[1]], end + 2  # "two circles coloured red"
        found.append(_Mention(nouns[token], colour, count, end))
    return found


def _starts(tokens: list[str], verbs: Sequence[tuple[str, ...]]) -> bool:
    return any(tuple(tokens[:len(verb)]) == verb for verb in verbs)


def _find(mention: _Mention, detection: Detection, rng: random.Random) -> list[DetectedObject]:
    """The detected objects ``mention`` names: for "the …", the one object it fits best (shape and colour each
    count one; a tie names none), so that one wrong word (the MLLM calling the orange square "the orange
    triangle") still finds its object, as a grounding model would; else ``count`` of the objects it fits
    exactly."""
    if mention.count is None:
        fits = [(o.shape == mention.shape) + (o.colour == mention.colour) for o in detection.objects]
        best = max(fits, default=0)
        if best == 0 or fits.count(best) != 1:
            raise ValueError(f"'the {mention.colour or ''} {mention.shape}' names no one object of the image")
        return [detection.objects[fits.index(best)]]
    found = [o for o in detection.objects if o.shape == mention.shape and mention.colour in (None, o.colour)]
    if len(found) < mention.count:
        raise ValueError(f"{mention.count} {mention.shape}(s) asked for, {len(found)} in the image")
    return rng.sample(found, mention.count)


def planned_edit(instruction: str, detection: Detection, config: WorldConfig, rng: random.Random) -> EditMarks | None:
    """The marks of the edit ``instruction`` asks of an image of the world ``config`` in which ``detection``
    was seen, or ``None`` when the planner cannot tell: an edit it does not know, an object it cannot find
    or that is not unique, no room left. Reads the world's edits in canonical and varied words: add, remove,
    recolour, replace and move objects, change or add a word.

    New objects and moved ones go where the world's layout rules would put them, drawn from ``rng``.
    """
    texts = quoted_texts(instruction)
    tokens = re.findall(r"[a-z]+|\d+", QUOTED_TEXT.sub(" ", instruction.lower()))
    taken = [o.box for o in detection.objects] + [w.box for w in detection.words]
    try:
        if len(texts) == 2:
            return _relabel(texts[0], texts[1], detection, config)
        if len(texts) == 1 and _starts(tokens, _ADD_VERBS):
            width, height = word_box_size(texts[0], config)
            x, y = place_among(config, rng, width, height, taken)
            return EditMarks(words=(Word(texts[0], x, y, config.text_height),))
        if texts or len(tokens) > _MAX_EDIT_TOKENS or _RIDDLE_WORDS.intersection(tokens):
            return None  # a prompt around the edit (reflection), or a riddle: the MLLM's to resolve first
        mentions, relations = _mentions(tokens, config), _relations(tokens)
        if not 1 <= len(mentions) <= 2 or len(relations) > 1:
            return None
        if len(mentions) == 2 and relations:  # move the subject to where it stands in the relation to the anchor
            (subject,), (anchor,) = _find(mentions[0], detection, rng), _find(mentions[1], detection, rng)
            box, name = subject.box, relations[0][1]
            side = max(box[2] - box[0], box[3] - box[1])
            x, y = place_among(config, rng, side, side, taken, lambda at: holds_clearly(name, at, anchor.box))
            return EditMarks(erased=(box,), drawn=(ObjectMark(subject.shape, centred_box(x, y, side, side),
                                                               subject.colour),))
        if len(mentions) == 2:  # replace: the new object takes the old one's place
            if not _REPLACE_WORDS.intersection(tokens) or _starts(tokens, _REMOVE_VERBS):
                return None  # two objects and no relation, not as a replacement: not a world edit
            return EditMarks(drawn=tuple(ObjectMark(mentions[1].shape, o.box)
                                         for o in _find(mentions[0], detection, rng)))
        (mention,) = mentions
        if relations:
            return None
        if _starts(tokens, _REMOVE_VERBS):
            return EditMarks(erased=tuple(o.box for o in _find(mention, detection, rng)))
        colours = _colour_names(config)
        if tokens[0] in _RECOLOUR_VERBS and any(t in colours for t in tokens[mention.end:]):
            return EditMarks(drawn=tuple(ObjectMark(o.shape, o.box) for o in _find(mention, detection, rng)))
        if _starts(tokens, _ADD_VERBS) and mention.count:
            boxes: list[Box] = []
            for _ in range(mention.count):
                side = sample_size(config, rng)
                boxes.append(centred_box(*place_among(config, rng, side, side, taken + boxes), side, side))
            return EditMarks(drawn=tuple(ObjectMark(mention.shape, box) for box in boxes))
    except ValueError:
        return None
    return None


def _relabel(old: str, new: str, detection: Detection, config: WorldConfig) -> EditMarks:
    """Erase the word ``old`` (the only word read, if none reads ``old``) and write ``new`` at its centre."""
    words = [w for w in detection.words if w.text == old.lower()] or list(detection.words)
    if len(words) != 1:
        raise ValueError(f"{len(words)} words could be {old!r}")
    box = words[0].box
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if config.layout == "grid":  # a word's centre sits mid-row, on a multiple of half a cell across
        cell = 1.0 / config.grid
        x = min(max(round(2 * x / cell), 1), 2 * config.grid - 1) * cell / 2
        y = (min(int(y / cell), config.grid - 1) + 0.5) * cell
    # The erased box spans the line's height, as a word's box does in training, whatever its letters' ink.
    half = config.text_height / 2
    return EditMarks(erased=((box[0], y - half, box[2], y + half),), words=(Word(new, x, y, config.text_height),))


@functools.lru_cache(maxsize=8)
def _detector(preset: str) -> WorldDetector:
    return WorldDetector(DetectorConfig.for_world(get_preset(preset)))


def plan_edit_glyphs(
    instruction: str,
    image: Image.Image,
    preset: str,
    width: int,
    height: int,
    seed: str | int | None,
    shapes: bool = False,
    colours: bool = False,
) -> Image.Image | None:
    """The edit marks of ``instruction`` on the input ``image`` (:func:`planned_edit` over what the world's
    detector sees in it) rendered at ``width`` × ``height``, or ``None`` when the planner cannot tell.

    Args:
        seed: fixes where new and moved objects go (``None``: fresh places).
        shapes: draw each object the edit draws as the silhouette of its shape rather than its box.
        colours: draw the silhouette of an object the edit moves in its colour (needs ``shapes``).
    """
    config = get_preset(preset)
    detection = _detector(preset).detect(image)
    marks = planned_edit(instruction, detection, config, random.Random(seed))
    return render_edit_marks(marks, width, height, config.canvas_px, shapes, colours) if marks else None
