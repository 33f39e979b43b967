"""Reflection: a prompt and an image that may miss it → a critique and the edit that fixes it.

The flawed image is the prompt's target scene with one controlled error (:data:`FLAWS`); the sample's
target is the scene after the corrective edit, which satisfies the prompt's spec. About a quarter of
samples have no flaw: the critique confirms the match and the answer is :data:`NO_FLAW_ANSWER`.
"""

from __future__ import annotations

import dataclasses
import random

from . import phrasing as ph
from .composition import composition, text
from .geometry import relation
from .layout import compose
from .render import word_width
from .sample import Draft
from .scene import Scene, SceneObject, WorldConfig
from .specs import spec_violations
from .vocab import words_for

FLAWS: tuple[str, ...] = ("count", "colour", "position", "missing_object", "shape", "wrong_word", "missing_word")
NO_FLAW_ANSWER = "The image already matches the prompt."
NO_FLAW_SHARE = 0.25  # share of samples whose image is already right, so the model learns when to stop
MAX_TRIES = 100  # prompts drawn before a forced flaw is declared impossible in this world
TEXT_BASE_SHARE = 0.25  # share of prompts that are text-rendering prompts (when the world writes words)

# The prompt follows a colon rather than sitting in quotes: text prompts carry quotes of their own.
_PROMPT_FRAMES = (
    "Here is an image made for this prompt: {p}. Check it and say how to fix it.",
    "The prompt was: {p}. Does the image match? If not, give an edit that fixes it.",
    "This image should show: {p}. What is wrong with it, and how should it be edited?",
    "Compare the image with this prompt and correct it if needed: {p}",
)
# Flaws that only some prompts allow are drawn more often, so each kind of error is well represented.
_FLAW_WEIGHTS = {"count": 3, "colour": 3, "position": 3, "wrong_word": 2, "missing_word": 2,
                 "missing_object": 1, "shape": 1}


def _replace_object(scene: Scene, old: SceneObject, new: SceneObject | None) -> Scene:
    objects = tuple(new if o is old else o for o in scene.objects if new is not None or o is not old)
    return dataclasses.replace(scene, objects=objects)


def _count_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    clause = base.spec.include[0]
    obj = base.target.objects[0]
    n = clause.count
    if n + 1 <= config.max_objects and rng.random() < 0.5:
        # One too many: lay out n + 1, and the fix removes the extra one.
        flawed = compose(config, rng, [(obj.shape, obj.colour)] * (n + 1))
        target = dataclasses.replace(flawed, objects=flawed.objects[:n])
        critique = f"The image shows {ph.noun_phrase(n + 1, obj.shape)} instead of {ph.number_word(n)}."
        return flawed, target, critique, f"remove {ph.noun_phrase(1, obj.shape, obj.colour)}"
    flawed = _replace_object(base.target, base.target.objects[-1], None)
    critique = f"The image shows {ph.noun_phrase(n - 1, obj.shape)} instead of {ph.number_word(n)}."
    return flawed, base.target, critique, f"add {ph.noun_phrase(1, obj.shape, obj.colour)}"


def _colour_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    coloured = [o for c in base.spec.include if c.colour for o in base.target.objects
                if o.shape == c.shape and o.colour == c.colour]
    obj = rng.choice(coloured)
    kinds = {(o.shape, o.colour) for o in base.target.objects}
    wrong = rng.choice([c for c in config.colours if (obj.shape, c) not in kinds])
    bad = dataclasses.replace(obj, colour=wrong)
    flawed = _replace_object(base.target, obj, bad)
    critique = f"The {obj.shape} should be {obj.colour}, but it is {wrong}."
    return flawed, base.target, critique, f"make {ph.reference(bad, flawed)} {obj.colour}"


def _position_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    name = base.spec.include[1].position[0]
    a, b = (next(o for o in base.target.objects if o.shape == c.shape) for c in base.spec.include[1::-1])
    # Swapping the two centres reverses the relation and cannot create an overlap between them.
    moved_a, moved_b = dataclasses.replace(a, x=b.x, y=b.y), dataclasses.replace(b, x=a.x, y=a.y)
    flawed = _replace_object(_replace_object(base.target, a, moved_a), b, moved_b)
    actual = relation(moved_a.box(), moved_b.box())
    where = f"{ph.relation_phrase(sorted(actual)[0])} it" if actual else "not"
    critique = f"The {a.shape} should be {ph.relation_phrase(name)} the {b.shape}, but it is {where}."
    answer = f"move {ph.reference(moved_a, flawed)} {ph.relation_phrase(name)} {ph.reference(moved_b, flawed)}"
    return flawed, base.target, critique, answer


def _missing_object_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    obj = rng.choice(base.target.objects)
    flawed = _replace_object(base.target, obj, None)
    named = ph.noun_phrase(1, obj.shape, obj.colour)
    return flawed, base.target, f"The image is missing {named.replace('one ', 'the ', 1)}.", f"add {named}"


def _shape_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    obj = rng.choice(base.target.objects)
    shapes = [s for s in config.shapes if base.target.count(s) == 0]
    if not shapes:
        return None
    bad = dataclasses.replace(obj, shape=rng.choice(shapes))
    flawed = _replace_object(base.target, obj, bad)
    critique = f"There should be a {obj.shape} where the image shows a {bad.shape}."
    answer = f"replace {ph.reference(bad, flawed)} with {ph.noun_phrase(1, obj.shape, obj.colour)}"
    return flawed, base.target, critique, answer


def _wrong_word_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    word = rng.choice(base.target.words)
    width = word_width(word.text, word.height, config.canvas_px)
    shown = {w.text for w in base.target.words}
    # The wrong word must fit the right word's place, or the image would have to move things around.
    options = [w for w in words_for(config) if w not in shown and word_width(w, word.height, config.canvas_px) <= width]
    if not options:
        return None
    wrong = rng.choice(options)
    words = tuple(dataclasses.replace(w, text=wrong) if w is word else w for w in base.target.words)
    flawed = dataclasses.replace(base.target, words=words)
    critique = f"The text should read {ph.quote(word.text)}, but it reads {ph.quote(wrong)}."
    return flawed, base.target, critique, f"change the word {ph.quote(wrong)} to {ph.quote(word.text)}"


def _missing_word_flaw(rng: random.Random, config: WorldConfig, base: Draft) -> tuple[Scene, Scene, str, str] | None:
    word = rng.choice(base.target.words)
    flawed = dataclasses.replace(base.target, words=tuple(w for w in base.target.words if w is not word))
    return flawed, base.target, f"The word {ph.quote(word.text)} is missing.", f"add the word {ph.quote(word.text)}"


_MAKERS = {
    "count": _count_flaw, "colour": _colour_flaw, "position": _position_flaw,
    "missing_object": _missing_object_flaw, "shape": _shape_flaw,
    "wrong_word": _wrong_word_flaw, "missing_word": _missing_word_flaw,
}


def applicable_flaws(base: Draft) -> tuple[str, ...]:
    """The flaws that a judge could see against ``base``'s spec."""
    spec = base.spec
    out = []
    if spec.tag == "counting":
        out.append("count")
    else:
        out += ["missing_object", "shape"] if base.target.objects else []
    if any(c.colour for c in spec.include):
        out.append("colour")
    if any(c.position for c in spec.include):
        out.append("position")
    if spec.texts:
        out += ["wrong_word", "missing_word"]
    return tuple(out)


def reflection(rng: random.Random, config: WorldConfig, flaw: str | None = None) -> Draft:
    """A reflection sample on a composition or text prompt.

    Args:
        flaw: one of :data:`FLAWS` or ``"none"``; ``None`` picks (``"none"`` with :data:`NO_FLAW_SHARE`).

    Raises:
        ValueError: for an unknown flaw, or one this world cannot show.
    """
    if flaw is not None and flaw not in (*FLAWS, "none"):
        raise ValueError(f"unknown flaw {flaw!r}; allowed: {', '.join(FLAWS)}, none")
    needs_text = flaw in ("wrong_word", "missing_word")
    if needs_text and not config.use_words:
        raise ValueError(f"flaw {flaw!r} needs a world with use_words=True")
    for _ in range(MAX_TRIES):
        use_text = config.use_words and (needs_text or (flaw is None and rng.random() < TEXT_BASE_SHARE))
        base = text(rng, config) if use_text else composition(rng, config)
        prompt = rng.choice(_PROMPT_FRAMES).format(p=base.instruction)
        options = applicable_flaws(base)
        chosen = flaw
        if chosen is None and rng.random() < NO_FLAW_SHARE:
            chosen = "none"
        elif chosen is None:
            chosen = rng.choices(options, [_FLAW_WEIGHTS[f] for f in options])[0]
        meta = {"kind": chosen, "base": base.meta["kind"], "prompt": base.instruction}
        if chosen == "none":
            critique = f"The image shows {base.answer}, as the prompt asks."
            return Draft(prompt, NO_FLAW_ANSWER, base.spec, base.target, (base.target,), reasoning=critique, meta=meta)
        made = _MAKERS[chosen](rng, config, base) if chosen in options else None
        # A flaw only counts if the judge could see it: the flawed scene must fail the spec.
        if made is None or not spec_violations(base.spec, made[0]):
            continue
        flawed, target, critique, answer = made
        reasoning = f"The image should show {base.answer}. {critique} So the fix is: {answer}."
        return Draft(prompt, answer, base.spec, target, (flawed,), reasoning=reasoning, meta=meta)
    raise ValueError(f"could not make a {flaw!r} flaw in {MAX_TRIES} prompts; this world may not allow it")
