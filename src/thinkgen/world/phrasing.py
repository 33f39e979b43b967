"""How the world says things: counts, noun phrases, references to objects, relations.

Every function has a canonical form (no ``rng``: the one way answers are written, so a model learns one
normal form) and a varied form (with ``rng``: synonyms, digits or words, reordered clauses, so a model
must understand a prompt rather than copy it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .knowledge import NUMBER_NAMES
from .scene import Scene, SceneObject

RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath"),
}
# The relation of B to A when A has relation r to B; lets a prompt name the reference object first.
CONVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def number_word(n: int) -> str:
    """``3`` → ``"three"``."""
    if not 0 <= n < len(NUMBER_NAMES):
        raise ValueError(f"no number word for {n}; allowed: 0 to {len(NUMBER_NAMES) - 1}")
    return NUMBER_NAMES[n]


def say_number(n: int, rng: random.Random | None = None) -> str:
    """A count as a word, or (varied form, one time in three) as digits."""
    if rng is not None and rng.random() < 1 / 3:
        return str(n)
    return number_word(n)


def plural(shape: str) -> str:
    """``"circle"`` → ``"circles"``, ``"cross"`` → ``"crosses"``."""
    return shape + "es" if shape.endswith("s") else shape + "s"


def article(word: str) -> str:
    """The indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def colour_word(colour: str, rng: random.Random | None = None) -> str:
    """A colour name; the varied form sometimes spells gray the British way."""
    if colour == "gray" and rng is not None and rng.random() < 0.5:
        return "grey"
    return colour


def pick(rng: random.Random, templates: Sequence[str], **fields: str) -> str:
    """One of ``templates`` at random, filled with ``fields``."""
    return rng.choice(templates).format(**fields)


def _quantity(count: int, rng: random.Random, next_word: str) -> str:
    if count > 1:
        return say_number(count, rng)
    quantity = rng.choice(("a", "one", "a single"))
    return article(next_word) if quantity == "a" else quantity


def noun_phrase(count: int, shape: str, colour: str | None = None, rng: random.Random | None = None) -> str:
    """``count`` objects of ``shape`` (and ``colour``).

    Canonical: ``"one red circle"``, ``"three squares"``. Varied: ``"a red circle"``,
    ``"a circle that is red"``, ``"3 red circles"``, ``"two circles coloured red"`` …
    """
    noun = shape if count == 1 else plural(shape)
    if rng is None:
        return f"{number_word(count)} {colour + ' ' if colour else ''}{noun}"
    if colour is None:
        return f"{_quantity(count, rng, noun)} {noun}"
    col = colour_word(colour, rng)
    form = rng.randrange(4)
    if form < 2:  # the plain order twice as often: it is how people usually say it
        return f"{_quantity(count, rng, col)} {col} {noun}"
    if form == 2:
        return f"{_quantity(count, rng, noun)} {noun} that {'is' if count == 1 else 'are'} {col}"
    return f"{_quantity(count, rng, noun)} {noun} coloured {col}"


def join_and(parts: Sequence[str]) -> str:
    """``["a", "b", "c"]`` → ``"a, b and c"``."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def relation_phrase(name: str, rng: random.Random | None = None) -> str:
    """``"left of"`` → ``"to the left of"`` (canonical) or a synonym (varied)."""
    phrases = RELATION_PHRASES[name]
    return phrases[0] if rng is None else rng.choice(phrases)


def reference(obj: SceneObject, scene: Scene, rng: random.Random | None = None) -> str:
    """A definite description that picks out ``obj`` alone in ``scene``.

    The shape alone when no other object shares it (``"the circle"``), else colour and shape
    (``"the red circle"``); the varied form sometimes names the colour even when not needed.

    Raises:
        ValueError: when another object has the same shape and colour (no description is unique).
    """
    same_kind = sum(1 for o in scene.objects if o.shape == obj.shape and o.colour == obj.colour)
    if same_kind != 1:
        raise ValueError(f"the {obj.colour} {obj.shape} is not unique in the scene, so it cannot be named")
    shape_unique = scene.count(obj.shape) == 1
    if shape_unique and (rng is None or rng.random() < 0.5):
        return f"the {obj.shape}"
    return f"the {colour_word(obj.colour, rng)} {obj.shape}"


def quote(word: str) -> str:
    """A word as it appears in prompts: ``"cat"`` with double quotes."""
    return f'"{word}"'


def sentence(text: str) -> str:
    """Capitalise the first letter and end with a full stop."""
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")
