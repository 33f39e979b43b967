"""Edits: an input scene, an instruction, and the scene that the instruction asks for.

Six operations (:data:`EDIT_KINDS`). Each keeps every object it does not name exactly where it was (the
object order too), and returns an :class:`EditPlan` whose spec is the exact spec of the target: the edited
object in its new state, every untouched object, nothing else of their shapes. Operations take optional
forced values so that a reasoning edit can pick the value from a fact and only reword the instruction.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import phrasing as ph
from .composition import distinct_items
from .geometry import holds_clearly, relation
from .layout import compose, place, sample_size
from .render import word_width
from .sample import Draft
from .scene import RELATIONS, Scene, SceneObject, Spec, WorldConfig
from .specs import exact_spec
from .vocab import words_for

EDIT_KINDS: tuple[str, ...] = ("recolour", "add", "remove", "move", "replace", "relabel")

MAX_TRIES = 100  # scenes drawn before an edit is declared impossible in this world
WORD_CHANCE = 0.3  # share of edit scenes that also carry a word, so edits learn to leave text alone


@dataclass
class EditPlan:
    """One edit: ``source`` → ``target`` as ``answer`` (canonical) and ``instruction`` (varied) say.

    Args:
        kind: one of :data:`EDIT_KINDS`.
        source: the input scene.
        target: the scene after the edit; objects keep their order, added ones come last.
        instruction: the edit in varied words.
        answer: the edit in canonical words.
        subject: index of the edited object in ``source.objects`` (``None`` for add and relabel).
        fields: the canonical pieces of the answer (``ref`` names the subject in the source; also
            ``colour``, ``shape``, ``count``, ``relation``, ``ref_b``, ``old``, ``new`` as the kind needs),
            so a reasoning edit can word the same edit differently.
        anchor: for ``move``, index of the reference object.
    """

    kind: str
    source: Scene
    target: Scene
    instruction: str
    answer: str
    subject: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    anchor: int | None = None

    def spec(self, tag: str | None = None) -> Spec:
        """The exact spec of the target, tagged ``tag`` (default: the edit kind)."""
        absent = [o.shape for o in self.source.objects if self.target.count(o.shape) == 0]
        position = None
        if self.kind == "move":
            objs = self.target.objects
            position = (objs[self.subject], self.fields["relation"], objs[self.anchor])
        old = [self.fields["old"]] if self.kind == "relabel" else []
        return exact_spec(tag or self.kind, self.target, position=position, absent_shapes=absent, exclude_texts=old)

    def draft(self) -> Draft:
        """The plan as a plain edit sample (no reasoning)."""
        return Draft(self.instruction, self.answer, self.spec(), self.target, (self.source,), meta={"kind": self.kind})


def _words(rng: random.Random, config: WorldConfig) -> list[str]:
    if config.use_words and rng.random() < WORD_CHANCE:
        return [rng.choice(words_for(config))]
    return []


def _num_objects(rng: random.Random, lo: int, hi: int, kind: str) -> int:
    if hi < lo:
        raise ValueError(f"edit {kind!r} needs a scene of at least {lo} objects; this world allows {hi}")
    return rng.randint(lo, hi)


def _check_value(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{name} {value!r} is not in this world; allowed: {', '.join(allowed)}")


def _retry(kind: str, attempt: Callable[[], EditPlan | None]) -> EditPlan:
    # Forced values (a colour, a shape) may not fit a random scene; draw scenes until one takes them.
    for _ in range(MAX_TRIES):
        plan = attempt()
        if plan is not None:
            return plan
    raise ValueError(f"could not build a {kind!r} edit with these settings in {MAX_TRIES} scenes")


def recolour(rng: random.Random, config: WorldConfig, colour: str | None = None) -> EditPlan:
    """Give one object a new colour (``colour``, or a random one)."""
    _check_value("colour", colour, config.colours)

    def attempt() -> EditPlan | None:
        k = _num_objects(rng, 1, config.max_objects, "recolour")
        source = compose(config, rng, distinct_items(rng, config, k), _words(rng, config))
        kinds = {(o.shape, o.colour) for o in source.objects}
        options = [(i, c) for i, o in enumerate(source.objects) for c in config.colours
                   if (o.shape, c) not in kinds and (colour is None or c == colour)]
        if not options:
            return None
        i, new = rng.choice(options)
        obj = source.objects[i]
        target = _with_object(source, i, dataclasses.replace(obj, colour=new))
        ref, ref_v = ph.reference(obj, source), ph.reference(obj, source, rng)
        instruction = ph.pick(rng, ("make {r} {c}", "recolour {r} {c}", "change the colour of {r} to {c}",
                                    "paint {r} {c}", "turn {r} {c}"), r=ref_v, c=ph.colour_word(new, rng))
        return EditPlan("recolour", source, target, instruction, f"make {ref} {new}", i, {"ref": ref, "colour": new})

    return _retry("recolour", attempt)


def add(
    rng: random.Random, config: WorldConfig, count: int | None = None, colour: str | None = None,
    shape: str | None = None,
) -> EditPlan:
    """Add ``count`` objects of one kind (forced ``shape`` / ``colour``, else random) in free places."""
    _check_value("colour", colour, config.colours)
    _check_value("shape", shape, config.shapes)
    most = min(config.max_count, config.max_objects - 1)
    if count is not None and not 1 <= count <= most:
        raise ValueError(f"count={count} cannot be added in this world; allowed: 1 to {most}")
    k = _num_objects(rng, 1, config.max_objects - (count or 1), "add")
    num_new = count or rng.randint(1, min(2, config.max_count, config.max_objects - k))
    new_kind = (shape or rng.choice(config.shapes), colour or rng.choice(config.colours))
    # No kind may end up above max_count, so the input holds the new kind only if there is room for one more.
    base = distinct_items(rng, config, k, avoid=[new_kind] if num_new >= config.max_count else [])
    # Lay out the finished scene, then leave the new objects out of the input: both share every position.
    target = compose(config, rng, base + [new_kind] * num_new, _words(rng, config))
    source = dataclasses.replace(target, objects=target.objects[:k])
    noun, noun_v = ph.noun_phrase(num_new, *new_kind), ph.noun_phrase(num_new, *new_kind, rng)
    instruction = ph.pick(rng, ("add {n}", "put {n} in an empty spot", "also draw {n}", "add {n} to the picture",
                                "place {n} somewhere free"), n=noun_v)
    fields = {"count": num_new, "shape": new_kind[0], "colour": new_kind[1]}
    return EditPlan("add", source, target, instruction, f"add {noun}", None, fields)


def remove(rng: random.Random, config: WorldConfig, colour: str | None = None) -> EditPlan:
    """Remove one object (with ``colour`` forced, the only object of that colour)."""
    k = _num_objects(rng, 2, config.max_objects, "remove")
    if colour is None:
        items = distinct_items(rng, config, k)
        i = rng.randrange(k)
    else:
        _check_value("colour", colour, config.colours)
        # The named colour must pick out one object, so no other object may share it.
        items = [(rng.choice(config.shapes), colour)]
        items += distinct_items(rng, config, k - 1, avoid=[(s, colour) for s in config.shapes])
        i = 0
    source = compose(config, rng, items, _words(rng, config))
    obj = source.objects[i]
    target = dataclasses.replace(source, objects=source.objects[:i] + source.objects[i + 1:])
    ref, ref_v = ph.reference(obj, source), ph.reference(obj, source, rng)
    instruction = ph.pick(rng, ("remove {r}", "delete {r}", "take away {r}", "erase {r}", "get rid of {r}"), r=ref_v)
    return EditPlan("remove", source, target, instruction, f"remove {ref}", i, {"ref": ref, "colour": obj.colour})


def move(rng: random.Random, config: WorldConfig) -> EditPlan:
    """Move one object so that it clearly stands in a relation to another that did not hold before."""

    def attempt() -> EditPlan | None:
        k = _num_objects(rng, 2, min(config.max_objects, config.capacity() - 1), "move")
        items = distinct_items(rng, config, k)
        sizes = [sample_size(config, rng) for _ in items]
        # One spare spot: where the moved object goes, guaranteed free of everything else.
        centres, words = place(config, rng, [*sizes, max(sizes)], _words(rng, config))
        objects = [SceneObject(s, c, x, y, size) for (s, c), (x, y), size in zip(items, centres, sizes)]
        source = Scene(tuple(objects), tuple(words))
        i, j = rng.sample(range(k), 2)
        moved = dataclasses.replace(objects[i], x=centres[k][0], y=centres[k][1])
        before = relation(objects[i].box(), objects[j].box())
        names = [r for r in RELATIONS if r not in before and holds_clearly(r, moved.box(), objects[j].box())]
        if not names:
            return None
        name = rng.choice(names)
        target = _with_object(source, i, moved)
        ref, ref_b = ph.reference(objects[i], source), ph.reference(objects[j], source)
        instruction = ph.pick(
            rng, ("move {r} {rel} {b}", "put {r} {rel} {b}", "place {r} {rel} {b}", "shift {r} so it is {rel} {b}"),
            r=ph.reference(objects[i], source, rng), rel=ph.relation_phrase(name, rng),
            b=ph.reference(objects[j], source, rng),
        )
        answer = f"move {ref} {ph.relation_phrase(name)} {ref_b}"
        fields = {"ref": ref, "relation": name, "ref_b": ref_b}
        return EditPlan("move", source, target, instruction, answer, i, fields, anchor=j)

    return _retry("move", attempt)


def replace(
    rng: random.Random, config: WorldConfig, shape: str | None = None, keep_colour: bool = False
) -> EditPlan:
    """Turn one object into another shape (``shape``, or a random one); unless ``keep_colour``, sometimes
    into a new colour too."""
    if len(config.shapes) < 2:
        raise ValueError(f"edit 'replace' needs at least two shapes; this world has {list(config.shapes)}")
    _check_value("shape", shape, config.shapes)

    def attempt() -> EditPlan | None:
        k = _num_objects(rng, 1, config.max_objects, "replace")
        source = compose(config, rng, distinct_items(rng, config, k), _words(rng, config))
        kinds = {(o.shape, o.colour) for o in source.objects}
        i = rng.randrange(k)
        obj = source.objects[i]
        new_colour = rng.choice(config.colours) if not keep_colour and rng.random() < 0.3 else obj.colour
        shapes = [s for s in config.shapes
                  if s != obj.shape and (s, new_colour) not in kinds and (shape is None or s == shape)]
        if not shapes:
            return None
        new_shape = rng.choice(shapes)
        target = _with_object(source, i, dataclasses.replace(obj, shape=new_shape, colour=new_colour))
        ref, ref_v = ph.reference(obj, source), ph.reference(obj, source, rng)
        if new_colour == obj.colour and rng.random() < 0.5:
            noun_v = f"{ph.article(new_shape)} {new_shape}"  # the colour goes unsaid: it stays
        else:
            noun_v = ph.noun_phrase(1, new_shape, new_colour, rng)
        instruction = ph.pick(rng, ("replace {r} with {n}", "turn {r} into {n}", "swap {r} for {n}",
                                    "change {r} into {n}"), r=ref_v, n=noun_v)
        answer = f"replace {ref} with {ph.noun_phrase(1, new_shape, new_colour)}"
        return EditPlan("replace", source, target, instruction, answer, i,
                        {"ref": ref, "shape": new_shape, "colour": new_colour})

    return _retry("replace", attempt)


def relabel(rng: random.Random, config: WorldConfig) -> EditPlan:
    """Change one word into another."""
    vocabulary = words_for(config)
    k = _num_objects(rng, 0, config.max_objects - 1, "relabel")
    old, new = rng.sample(vocabulary, 2)
    # Lay out the wider word; the narrower one then fits in its place at the same centre.
    wider = max((old, new), key=lambda w: word_width(w, config.text_height, config.canvas_px))
    laid = compose(config, rng, distinct_items(rng, config, k), [wider])
    word = laid.words[0]
    source = dataclasses.replace(laid, words=(dataclasses.replace(word, text=old),))
    target = dataclasses.replace(laid, words=(dataclasses.replace(word, text=new),))
    o, n = ph.quote(old), ph.quote(new)
    instruction = ph.pick(rng, ("change the word {o} to {n}", "replace the text {o} with {n}",
                                "make the word {o} read {n}", "rewrite {o} as {n}"), o=o, n=n)
    answer = f"change the word {o} to {n}"
    return EditPlan("relabel", source, target, instruction, answer, None, {"old": old, "new": new})


def _with_object(scene: Scene, i: int, obj: SceneObject) -> Scene:
    return dataclasses.replace(scene, objects=scene.objects[:i] + (obj,) + scene.objects[i + 1:])


OPERATIONS: dict[str, Callable[[random.Random, WorldConfig], EditPlan]] = {
    "recolour": recolour, "add": add, "remove": remove, "move": move, "replace": replace, "relabel": relabel,
}


def edit_kinds(config: WorldConfig) -> tuple[str, ...]:
    """The edit kinds the world of ``config`` can pose (relabel needs words, replace two shapes)."""
    return tuple(
        k for k in EDIT_KINDS
        if (k != "relabel" or config.use_words) and (k != "replace" or len(config.shapes) > 1)
        and (k not in ("remove", "move") or config.max_objects > 1)
    )


def edit(rng: random.Random, config: WorldConfig, kind: str | None = None) -> Draft:
    """A plain edit sample: input scene, varied instruction, canonical answer, target and its spec.

    Args:
        kind: one of :data:`EDIT_KINDS`; ``None`` picks one the world can pose.

    Raises:
        ValueError: for an unknown kind or one the world cannot pose.
    """
    if kind is None:
        kind = rng.choice(edit_kinds(config))
    if kind not in OPERATIONS:
        raise ValueError(f"unknown edit kind {kind!r}; allowed: {', '.join(EDIT_KINDS)}")
    if kind not in edit_kinds(config):
        raise ValueError(
            f"edit {kind!r} is not possible in this world (relabel needs use_words, replace two shapes, "
            f"remove and move two objects); possible here: {', '.join(edit_kinds(config))}"
        )
    return OPERATIONS[kind](rng, config).draft()
