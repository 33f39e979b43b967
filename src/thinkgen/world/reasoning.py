"""Reasoning prompts: the value to draw is named through knowledge or arithmetic, never said outright.

``reasoning`` asks for a new image ("as many triangles as a tricycle has wheels, coloured like the sky");
``reasoning_edit`` asks for an edit ("recolour the square the colour of grass"). Each sample carries the
chain of thought that recalls the facts (``reasoning``) and the plain instruction it leads to (``answer``).
"""

from __future__ import annotations

import random

from . import edits
from . import phrasing as ph
from .composition import frame, place_related
from .knowledge import Fact, facts_for, random_arithmetic
from .layout import compose
from .sample import Draft
from .scene import RELATIONS, Clause, Spec, WorldConfig

REASONING_KINDS: tuple[str, ...] = ("count_colour", "colour", "shape", "arithmetic", "relation")
REASONING_EDIT_KINDS: tuple[str, ...] = ("recolour", "add", "replace", "remove")


def _fact(rng: random.Random, config: WorldConfig, kind: str, max_value: int | None = None) -> Fact:
    facts = [f for f in facts_for(config, kind) if max_value is None or int(f.value) <= max_value]
    if not facts:
        raise ValueError(f"this world has no {kind} fact it can draw (shapes, colours or max_count too narrow)")
    return rng.choice(facts)


def colour_clue(fact: Fact, rng: random.Random) -> str:
    """``"coloured like the sky"``, ``"the colour of grass"`` …"""
    return ph.pick(rng, ("coloured like {s}", "the colour of {s}", "in the colour of {s}", "with the colour of {s}"),
                   s=fact.subject)


def count_clue(fact: Fact, shape: str, rng: random.Random, colour: str = "") -> str:
    """``"as many stars as a tricycle has wheels"`` or ``"one star for each wheel of a tricycle"``."""
    lead = f"{colour} " if colour else ""
    if rng.random() < 0.5:
        return f"as many {lead}{ph.plural(shape)} as {fact.subject} has {fact.units}"
    return f"one {lead}{shape} for each {fact.unit} of {fact.subject}"


def shape_clue(fact: Fact, rng: random.Random) -> str:
    """``"shaped like a full moon"``, ``"in the shape of a kite"`` …"""
    return ph.pick(rng, ("shaped like {s}", "with the shape of {s}", "in the shape of {s}"), s=fact.subject)


def _counted(count: int, shape: str, colour: str, config: WorldConfig, rng: random.Random, kind: str,
             body: str, steps: list[str], facts: list[Fact], **meta: object) -> Draft:
    answer = ph.noun_phrase(count, shape, colour)
    steps.append(f"So I will draw {answer}.")
    spec = Spec(f"reasoning_{kind}", include=[Clause(shape, count, colour)], exclude=[Clause(shape, count + 1)])
    scene = compose(config, rng, [(shape, colour)] * count)
    return Draft(frame(rng, body), answer, spec, scene, reasoning=" ".join(steps),
                 meta={"kind": kind, "facts": [f.id for f in facts], **meta})


def reasoning(rng: random.Random, config: WorldConfig, kind: str | None = None) -> Draft:
    """A text-to-image prompt that needs knowledge or arithmetic.

    Args:
        kind: one of :data:`REASONING_KINDS`; ``None`` picks one.

    Raises:
        ValueError: for an unknown kind, or a world whose shapes/colours/counts no fact can reach.
    """
    if kind is None:
        kind = rng.choice(REASONING_KINDS)
    if kind not in REASONING_KINDS:
        raise ValueError(f"unknown reasoning kind {kind!r}; allowed: {', '.join(REASONING_KINDS)}")
    shape = rng.choice(config.shapes)

    if kind == "count_colour":
        count_fact, colour_fact = _fact(rng, config, "count"), _fact(rng, config, "colour")
        n, colour = int(count_fact.value), str(colour_fact.value)
        body = f"{count_clue(count_fact, shape, rng)}, {rng.choice(('', 'all '))}{colour_clue(colour_fact, rng)}"
        steps = [count_fact.statement(), f"So I need {ph.noun_phrase(n, shape)}.", colour_fact.statement(),
                 f"So {'it is' if n == 1 else 'they are'} {colour}."]
        return _counted(n, shape, colour, config, rng, kind, body, steps, [count_fact, colour_fact])

    if kind == "colour":
        colour_fact = _fact(rng, config, "colour")
        n, colour = rng.randint(1, config.max_count), str(colour_fact.value)
        body = f"{ph.noun_phrase(n, shape, rng=rng)} {colour_clue(colour_fact, rng)}"
        subject = f"the {shape} is" if n == 1 else f"the {ph.plural(shape)} are"
        steps = [colour_fact.statement(), f"So {subject} {colour}."]
        return _counted(n, shape, colour, config, rng, kind, body, steps, [colour_fact])

    if kind == "shape":
        shape_fact = _fact(rng, config, "shape")
        n, colour, shape = rng.randint(1, config.max_count), rng.choice(config.colours), str(shape_fact.value)
        noun = rng.choice(("thing", "object", "shape"))
        quantity = ph.noun_phrase(n, noun, colour, rng)
        body = f"{quantity} {shape_clue(shape_fact, rng)}"
        steps = [shape_fact.statement(), f"So each {noun} is a {shape}."]
        return _counted(n, shape, colour, config, rng, kind, body, steps, [shape_fact])

    if kind == "arithmetic":
        n, colour = rng.randint(1, config.max_count), rng.choice(config.colours)
        sum_ = random_arithmetic(rng, n)
        expression = sum_.expression(use_digits=rng.random() < 0.3)
        body = ph.pick(rng, ("as many {c} {p} as {e}", "a number of {c} {p} equal to {e}", "{e} {c} {p}"),
                       c=ph.colour_word(colour, rng), p=ph.plural(shape), e=expression)
        steps = [sum_.statement(), f"So I need {ph.noun_phrase(n, shape)}."]
        arithmetic = [sum_.left, sum_.op, sum_.right]
        return _counted(n, shape, colour, config, rng, kind, body, steps, [], arithmetic=arithmetic)

    # relation: two objects, each coloured through a fact, in a spatial relation
    if len(config.shapes) < 2:
        raise ValueError(f"reasoning kind 'relation' needs at least two shapes; this world has {list(config.shapes)}")
    a, b = rng.sample(config.shapes, 2)
    fact_a, fact_b = _fact(rng, config, "colour"), _fact(rng, config, "colour")
    while fact_b == fact_a:  # two different facts, though their colours may agree
        fact_b = _fact(rng, config, "colour")
    ca, cb = str(fact_a.value), str(fact_b.value)
    name = rng.choice(RELATIONS)
    body = (f"{ph.noun_phrase(1, a, rng=rng)} {colour_clue(fact_a, rng)} {ph.relation_phrase(name, rng)} "
            f"{ph.noun_phrase(1, b, rng=rng)} {colour_clue(fact_b, rng)}")
    answer = f"{ph.noun_phrase(1, a, ca)} {ph.relation_phrase(name)} {ph.noun_phrase(1, b, cb)}"
    steps = [fact_a.statement(), f"So the {a} is {ca}.", fact_b.statement(), f"So the {b} is {cb}.",
             f"So I will draw {answer}."]
    spec = Spec("reasoning_relation", include=[Clause(b, colour=cb), Clause(a, colour=ca, position=(name, 0))])
    scene = place_related(rng, config, [(a, ca), (b, cb)], name)
    return Draft(frame(rng, body), answer, spec, scene, reasoning=" ".join(steps),
                 meta={"kind": kind, "facts": [fact_a.id, fact_b.id]})


def reasoning_edit(rng: random.Random, config: WorldConfig, kind: str | None = None) -> Draft:
    """An edit whose value (colour, count, shape, or which object) is named through a fact.

    Args:
        kind: one of :data:`REASONING_EDIT_KINDS`; ``None`` picks one.

    Raises:
        ValueError: for an unknown kind, or a world no fact of that kind fits.
    """
    if kind is None:
        kind = rng.choice(REASONING_EDIT_KINDS)
    if kind not in REASONING_EDIT_KINDS:
        raise ValueError(f"unknown reasoning edit kind {kind!r}; allowed: {', '.join(REASONING_EDIT_KINDS)}")

    if kind == "recolour":
        fact = _fact(rng, config, "colour")
        plan = edits.recolour(rng, config, colour=str(fact.value))
        ref = ph.reference(plan.source.objects[plan.subject], plan.source, rng)
        instruction = ph.pick(rng, ("make {r} the colour of {s}", "paint {r} the same colour as {s}",
                                    "recolour {r} to match {s}", "give {r} the colour of {s}"), r=ref, s=fact.subject)
        steps = [fact.statement(), f"So {plan.fields['ref']} becomes {fact.value}."]

    elif kind == "add":
        fact = _fact(rng, config, "count", max_value=config.max_objects - 1)
        plan = edits.add(rng, config, count=int(fact.value))
        shape, colour = plan.fields["shape"], plan.fields["colour"]
        instruction = "add " + count_clue(fact, shape, rng, colour=ph.colour_word(colour, rng))
        steps = [fact.statement(), f"So I add {ph.noun_phrase(int(fact.value), shape, colour)}."]

    elif kind == "replace":
        if len(config.shapes) < 2:
            raise ValueError(f"reasoning edit 'replace' needs two shapes or more; this world has {list(config.shapes)}")
        fact = _fact(rng, config, "shape")
        plan = edits.replace(rng, config, shape=str(fact.value), keep_colour=True)
        ref = ph.reference(plan.source.objects[plan.subject], plan.source, rng)
        instruction = ph.pick(rng, ("turn {r} into something {c}", "replace {r} with a shape like {s}",
                                    "reshape {r} to look like {s}"), r=ref, c=shape_clue(fact, rng), s=fact.subject)
        steps = [fact.statement(), f"So {plan.fields['ref']} becomes a {fact.value} of the same colour."]

    else:  # remove: the object to remove is the one with a fact's colour
        fact = _fact(rng, config, "colour")
        plan = edits.remove(rng, config, colour=str(fact.value))
        instruction = ph.pick(rng, ("remove the object that is the colour of {s}",
                                    "take away the thing coloured like {s}",
                                    "delete whatever has the colour of {s}"), s=fact.subject)
        steps = [fact.statement(), f"The {fact.value} object is {plan.fields['ref']}, so I remove it."]

    return Draft(instruction, plan.answer, plan.spec(f"reasoning_{kind}"), plan.target, (plan.source,),
                 reasoning=" ".join(steps), meta={"kind": kind, "facts": [fact.id]})
