"""Text-to-image prompts: GenEval's six composition tasks and text rendering.

Each generator returns a :class:`~thinkgen.world.sample.Draft` whose ``answer`` is the canonical,
complete description of the target scene (colours chosen, counts as words), so the instruction after
``</think>`` fixes everything but the layout.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from . import phrasing as ph
from .geometry import holds_clearly
from .layout import compose
from .sample import Draft
from .scene import RELATIONS, Clause, Scene, Spec, WorldConfig
from .vocab import words_for

COMPOSITION_TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's task names, used as spec tags."""

MAX_PLACEMENT_TRIES = 200  # layouts drawn before a relation is declared impossible on this canvas

_FRAMES = (
    "{}", "{}", "a photo of {}", "an image of {}", "a picture of {}", "draw {}", "{} on a white background",
)


def frame(rng: random.Random, body: str) -> str:
    """Wrap a description in one of a few prompt frames (``"a photo of …"``, ``"draw …"``)."""
    return rng.choice(_FRAMES).format(body)


def distinct_items(rng: random.Random, config: WorldConfig, k: int, avoid: Sequence[tuple[str, str]] = ()) -> list[
    tuple[str, str]
]:
    """``k`` different (shape, colour) pairs of the world, none in ``avoid``.

    Raises:
        ValueError: when the world has fewer than ``k`` such pairs.
    """
    pool = [(s, c) for s in config.shapes for c in config.colours if (s, c) not in avoid]
    if k > len(pool):
        raise ValueError(f"asked for {k} different shape-colour pairs but this world has only {len(pool)}")
    return rng.sample(pool, k)


def place_related(
    rng: random.Random, config: WorldConfig, items: Sequence[tuple[str, str]], name: str,
    texts: Sequence[str] = (),
) -> Scene:
    """A scene of ``items`` in which the first object clearly has relation ``name`` to the second.

    Raises:
        ValueError: when no layout in :data:`MAX_PLACEMENT_TRIES` draws gives the relation.
    """
    for _ in range(MAX_PLACEMENT_TRIES):
        scene = compose(config, rng, items, texts)
        if holds_clearly(name, scene.objects[0].box(), scene.objects[1].box()):
            return scene
    raise ValueError(f"could not place a {items[0][0]} {name} a {items[1][0]} in {MAX_PLACEMENT_TRIES} layouts")


def _two_shapes(rng: random.Random, config: WorldConfig, task: str) -> tuple[str, str]:
    if len(config.shapes) < 2:
        raise ValueError(f"task {task!r} needs at least two shapes; this world has {list(config.shapes)}")
    a, b = rng.sample(config.shapes, 2)
    return a, b


def composition(
    rng: random.Random, config: WorldConfig, task: str | None = None, *, count: int | None = None
) -> Draft:
    """A GenEval-style prompt with its spec and target scene.

    Args:
        rng: the sample's random stream.
        config: the world.
        task: one of :data:`COMPOSITION_TASKS`; ``None`` picks one at random.
        count: for ``counting``, the count (2 to ``config.max_count``); ``None`` picks one.

    Raises:
        ValueError: for an unknown task, a count the world cannot hold, or a task the world cannot pose.
    """
    if task is None:
        task = rng.choice(COMPOSITION_TASKS)
    if task not in COMPOSITION_TASKS:
        raise ValueError(f"unknown composition task {task!r}; allowed: {', '.join(COMPOSITION_TASKS)}")
    if count is not None and task != "counting":
        raise ValueError(f"count is only used by the 'counting' task, not {task!r}")
    shape = rng.choice(config.shapes)
    colour = rng.choice(config.colours)

    if task == "single_object":
        body = ph.noun_phrase(1, shape, rng=rng)
        spec = Spec(task, include=[Clause(shape)])
        scene = compose(config, rng, [(shape, colour)])
        answer = ph.noun_phrase(1, shape, colour)

    elif task == "colors":
        body = ph.noun_phrase(1, shape, colour, rng)
        spec = Spec(task, include=[Clause(shape, colour=colour)])
        scene = compose(config, rng, [(shape, colour)])
        answer = ph.noun_phrase(1, shape, colour)

    elif task == "counting":
        if config.max_count < 2:
            raise ValueError(f"task 'counting' needs max_count >= 2; this world has {config.max_count}")
        if count is None:
            count = rng.randint(2, config.max_count)
        if not 2 <= count <= config.max_count:
            raise ValueError(f"count={count} is out of range for this world; allowed: 2 to {config.max_count}")
        body = ph.noun_phrase(count, shape, rng=rng)
        if rng.random() < 0.25:
            body = "exactly " + body
        spec = Spec(task, include=[Clause(shape, count)], exclude=[Clause(shape, count + 1)])
        scene = compose(config, rng, [(shape, colour)] * count)
        answer = ph.noun_phrase(count, shape, colour)

    elif task in ("two_object", "color_attr"):
        a, b = _two_shapes(rng, config, task)
        ca, cb = rng.sample(config.colours, 2)
        named = task == "color_attr"
        parts = [ph.noun_phrase(1, a, ca if named else None, rng), ph.noun_phrase(1, b, cb if named else None, rng)]
        body = rng.choice(("{} and {}", "{} and {}", "{} together with {}", "both {} and {}", "{} as well as {}"))
        body = body.format(*parts)
        spec = Spec(task, include=[Clause(a, colour=ca if named else None), Clause(b, colour=cb if named else None)])
        scene = compose(config, rng, [(a, ca), (b, cb)])
        answer = ph.join_and([ph.noun_phrase(1, a, ca), ph.noun_phrase(1, b, cb)])

    else:  # position
        a, b = _two_shapes(rng, config, task)
        ca, cb = rng.sample(config.colours, 2)
        name = rng.choice(RELATIONS)
        np_a, np_b = ph.noun_phrase(1, a, rng=rng), ph.noun_phrase(1, b, rng=rng)
        form = rng.randrange(3)
        if form == 0:
            body = f"{np_a} {ph.relation_phrase(name, rng)} {np_b}"
        elif form == 1:  # the converse names the reference object first
            body = f"{np_b} {ph.relation_phrase(ph.CONVERSE[name], rng)} {np_a}"
        else:
            body = f"{np_b} with {np_a} {ph.relation_phrase(name, rng)} it"
        spec = Spec(task, include=[Clause(b), Clause(a, position=(name, 0))])
        scene = place_related(rng, config, [(a, ca), (b, cb)], name)
        # The answer keeps the order and relation of a prompt that names two objects and the relation
        # between them: "X p Y" reads alike in forms 0 and 1, so an answer that put the related object
        # first would turn it to "Y p' X" for half of them at random, and a model could not tell which.
        first, second, said = ((b, cb), (a, ca), ph.CONVERSE[name]) if form == 1 else ((a, ca), (b, cb), name)
        answer = f"{ph.noun_phrase(1, *first)} {ph.relation_phrase(said)} {ph.noun_phrase(1, *second)}"

    return Draft(instruction=frame(rng, body), answer=answer, spec=spec, target=scene, meta={"kind": task})


def words_phrase(words: Sequence[str], rng: random.Random | None = None) -> str:
    """``'the word "cat"'`` / ``'the words "cat" and "dog"'``; the varied form also says "text"."""
    quoted = ph.join_and([ph.quote(w) for w in words])
    noun = "word" if len(words) == 1 else "words"
    if rng is None:
        return f"the {noun} {quoted}"
    return ph.pick(
        rng,
        ("the {noun} {q}", "the {noun} {q}", "the text {q}", "{q} written in black", "the {noun} {q} in black letters"),
        noun=noun, q=quoted,
    )


def text(
    rng: random.Random, config: WorldConfig, *, num_words: int | None = None, num_objects: int | None = None
) -> Draft:
    """A text-rendering prompt: one or more words, with or without objects.

    Args:
        num_words: words to write (1 to ``config.max_words``); ``None`` picks.
        num_objects: objects beside the words (0 to ``config.max_objects``); ``None`` picks 0 half the time.

    Raises:
        ValueError: when the world writes no words, or the counts are out of range.
    """
    vocabulary = words_for(config)
    if num_words is None:
        num_words = rng.randint(1, config.max_words)
    if not 1 <= num_words <= config.max_words:
        raise ValueError(f"num_words={num_words} is out of range; allowed: 1 to {config.max_words}")
    if num_objects is None:
        num_objects = 0 if rng.random() < 0.5 else rng.randint(1, min(2, config.max_objects))
    if not 0 <= num_objects <= config.max_objects:
        raise ValueError(f"num_objects={num_objects} is out of range; allowed: 0 to {config.max_objects}")
    words = rng.sample(vocabulary, num_words)
    items = distinct_items(rng, config, num_objects)
    scene = compose(config, rng, items, words)
    written = words_phrase(words, rng)
    if items:
        objects = [ph.noun_phrase(1, s, c, rng) for s, c in items]
        body = rng.choice((ph.join_and([*objects, written]), f"{written} and {ph.join_and(objects)}",
                           f"{ph.join_and(objects)}, with {written}"))
        answer = ph.join_and([*(ph.noun_phrase(1, s, c) for s, c in items), words_phrase(words)])
        instruction = frame(rng, body)
    else:
        quoted = ph.join_and([ph.quote(w) for w in words])
        instruction = rng.choice((frame(rng, written), frame(rng, written), f"write {quoted}",
                                  f"an image with {written}"))
        answer = words_phrase(words)
    spec = Spec("text", include=[Clause(s, colour=c) for s, c in items], texts=list(words))
    return Draft(instruction=instruction, answer=answer, spec=spec, target=scene, meta={"kind": "text"})
