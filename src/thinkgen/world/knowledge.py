"""The world's knowledge base: colours, counts and shapes of everyday things, plus small arithmetic.

Reasoning prompts name a thing instead of the value ("coloured like the sky", "as many stars as a
tricycle has wheels"); the model must recall the fact to draw the right image. Facts in
:data:`HELD_OUT_FACTS` appear only in the test split, in compositions never seen in training.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from .scene import WorldConfig

FactKind = str  # "colour" | "count" | "shape"
FACT_KINDS: tuple[FactKind, ...] = ("colour", "count", "shape")


@dataclass(frozen=True)
class Fact:
    """One piece of world knowledge.

    Args:
        id: stable name, ``"<kind>:<key>"`` (used by splits and sample metadata).
        kind: ``"colour"`` (value: a colour name), ``"count"`` (value: an int) or ``"shape"``
            (value: a shape name).
        subject: the thing, with its article (``"a tricycle"``, ``"the sky"``).
        value: the colour, count or shape.
        unit: for count facts, what is counted, singular (``"wheel"``).
    """

    id: str
    kind: FactKind
    subject: str
    value: str | int
    unit: str = ""

    @property
    def units(self) -> str:
        """The counted thing in the plural (``"wheels"``)."""
        return self.unit + "s"

    def statement(self) -> str:
        """The fact as a sentence, for reasoning traces (``"A tricycle has three wheels."``)."""
        subject = self.subject[0].upper() + self.subject[1:]
        if self.kind == "colour":
            return f"{subject} is {self.value}."
        if self.kind == "shape":
            return f"{subject} is shaped like a {self.value}."
        noun = self.unit if self.value == 1 else self.units
        return f"{subject} has {NUMBER_NAMES[int(self.value)]} {noun}."


NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _colour(key: str, subject: str, value: str) -> Fact:
    return Fact(f"colour:{key}", "colour", subject, value)


def _count(key: str, subject: str, value: int, unit: str) -> Fact:
    return Fact(f"count:{key}", "count", subject, value, unit)


def _shape(key: str, subject: str, value: str) -> Fact:
    return Fact(f"shape:{key}", "shape", subject, value)


FACTS: tuple[Fact, ...] = (
    _colour("sky", "the sky on a clear day", "blue"),
    _colour("sea", "the sea", "blue"),
    _colour("blueberry", "a blueberry", "blue"),
    _colour("sapphire", "a sapphire", "blue"),
    _colour("grass", "grass", "green"),
    _colour("frog", "a frog", "green"),
    _colour("lime", "a lime", "green"),
    _colour("summer_leaf", "a leaf in summer", "green"),
    _colour("banana", "a ripe banana", "yellow"),
    _colour("lemon", "a lemon", "yellow"),
    _colour("sun", "the sun in a child's drawing", "yellow"),
    _colour("chick", "a baby chick", "yellow"),
    _colour("tomato", "a ripe tomato", "red"),
    _colour("fire_truck", "a fire truck", "red"),
    _colour("strawberry", "a strawberry", "red"),
    _colour("cherry", "a cherry", "red"),
    _colour("coal", "coal", "black"),
    _colour("crow", "a crow", "black"),
    _colour("tyre", "a car tyre", "black"),
    _colour("flamingo", "a flamingo", "pink"),
    _colour("cotton_candy", "cotton candy", "pink"),
    _colour("piglet", "a piglet", "pink"),
    _colour("carrot", "a carrot", "orange"),
    _colour("pumpkin", "a pumpkin", "orange"),
    _colour("tangerine", "a tangerine", "orange"),
    _colour("eggplant", "an eggplant", "purple"),
    _colour("lavender", "lavender", "purple"),
    _colour("amethyst", "an amethyst", "purple"),
    _colour("chocolate", "milk chocolate", "brown"),
    _colour("tree_trunk", "a tree trunk", "brown"),
    _colour("coffee", "coffee", "brown"),
    _colour("elephant", "an elephant", "gray"),
    _colour("rain_cloud", "a rain cloud", "gray"),
    _count("unicycle", "a unicycle", 1, "wheel"),
    _count("bicycle", "a bicycle", 2, "wheel"),
    _count("tricycle", "a tricycle", 3, "wheel"),
    _count("car", "a car", 4, "wheel"),
    _count("dog", "a dog", 4, "leg"),
    _count("horse", "a horse", 4, "leg"),
    _count("chicken", "a chicken", 2, "leg"),
    _count("stool", "a stool", 3, "leg"),
    _count("insect", "an insect", 6, "leg"),
    _count("bird_wings", "a bird", 2, "wing"),
    _count("person_eyes", "a person", 2, "eye"),
    _count("cyclops", "a cyclops", 1, "eye"),
    _count("rabbit", "a rabbit", 2, "ear"),
    _count("unicorn", "a unicorn", 1, "horn"),
    _count("dromedary", "a dromedary camel", 1, "hump"),
    _count("bactrian", "a Bactrian camel", 2, "hump"),
    _count("triangle_sides", "a triangle", 3, "side"),
    _count("square_sides", "a square", 4, "side"),
    _count("pentagon", "a pentagon", 5, "side"),
    _count("hexagon", "a hexagon", 6, "side"),
    _count("hand", "a hand", 5, "finger"),
    _count("violin", "a violin", 4, "string"),
    _count("guitar", "a guitar", 6, "string"),
    _count("traffic_light", "a traffic light", 3, "lamp"),
    _count("year", "a year", 4, "season"),
    _count("coin", "a coin", 2, "side"),
    _count("starfish_arms", "a starfish", 5, "arm"),
    _count("die", "a die", 6, "face"),
    _shape("full_moon", "a full moon", "circle"),
    _shape("coin", "a coin", "circle"),
    _shape("wheel", "a wheel", "circle"),
    _shape("plate", "a dinner plate", "circle"),
    _shape("pizza_slice", "a slice of pizza", "triangle"),
    _shape("yield_sign", "a yield sign", "triangle"),
    _shape("sail", "the sail of a small boat", "triangle"),
    _shape("chessboard", "a chessboard", "square"),
    _shape("sticky_note", "a sticky note", "square"),
    _shape("die_face", "one face of a die", "square"),
    _shape("starfish", "a starfish", "star"),
    _shape("sheriff_badge", "a sheriff's badge", "star"),
    _shape("tree_topper", "the top of a Christmas tree", "star"),
    _shape("kite", "a kite", "diamond"),
    _shape("infield", "a baseball infield", "diamond"),
    _shape("rhombus", "a rhombus", "diamond"),
    _shape("plus_sign", "a plus sign", "cross"),
    _shape("swiss_flag", "the emblem on the Swiss flag", "cross"),
    _shape("crossroads", "a crossroads seen from above", "cross"),
)
"""Every fact, in a fixed order."""

FACTS_BY_ID: dict[str, Fact] = {f.id: f for f in FACTS}

# Chosen so that every held-out value keeps other facts in training: the test asks for a known value
# reached through an unseen fact.
HELD_OUT_FACTS: frozenset[str] = frozenset(
    {
        "colour:frog", "colour:pumpkin", "colour:crow", "colour:lavender", "colour:sapphire",
        "count:stool", "count:rabbit", "count:violin", "count:cyclops",
        "shape:coin", "shape:yield_sign", "shape:sticky_note", "shape:sheriff_badge", "shape:rhombus",
    }
)


def asks_held_out_fact(fact_ids: Iterable[str]) -> bool:
    """Whether any of ``fact_ids`` (a sample's ``meta["facts"]``) is held out of the train split."""
    return any(f in HELD_OUT_FACTS for f in fact_ids)


def facts_for(config: WorldConfig, kind: FactKind, *, include_held_out: bool = True) -> tuple[Fact, ...]:
    """The facts of ``kind`` whose value the world of ``config`` can draw.

    Colour facts need the colour in ``config.colours``, shape facts the shape in ``config.shapes`` and
    count facts a count from 1 to ``config.max_count``.
    """
    if kind not in FACT_KINDS:
        raise ValueError(f"unknown fact kind {kind!r}; allowed: {', '.join(FACT_KINDS)}")

    def drawable(fact: Fact) -> bool:
        if kind == "colour":
            return fact.value in config.colours
        if kind == "shape":
            return fact.value in config.shapes
        return 1 <= int(fact.value) <= config.max_count

    return tuple(
        f for f in FACTS
        if f.kind == kind and drawable(f) and (include_held_out or f.id not in HELD_OUT_FACTS)
    )


@dataclass(frozen=True)
class Arithmetic:
    """A small sum or difference whose result is a count: ``left op right``."""

    left: int
    op: str  # "plus" | "minus"
    right: int

    @property
    def value(self) -> int:
        return self.left + self.right if self.op == "plus" else self.left - self.right

    def expression(self, use_digits: bool = False) -> str:
        """``"two plus one"``, or ``"2 + 1"`` with ``use_digits``."""
        if use_digits:
            return f"{self.left} {'+' if self.op == 'plus' else '-'} {self.right}"
        return f"{NUMBER_NAMES[self.left]} {self.op} {NUMBER_NAMES[self.right]}"

    def statement(self) -> str:
        """``"Two plus one is three."``"""
        text = self.expression()
        return f"{text[0].upper()}{text[1:]} is {NUMBER_NAMES[self.value]}."


def random_arithmetic(rng: random.Random, result: int) -> Arithmetic:
    """A random ``a + b`` or ``a - b`` (operands 1 to 9) that equals ``result`` (1 to 8)."""
    if not 1 <= result <= 8:
        raise ValueError(f"arithmetic result {result} is out of range; allowed: 1 to 8")
    if result >= 2 and rng.random() < 0.5:
        left = rng.randint(1, result - 1)
        return Arithmetic(left, "plus", result - left)
    right = rng.randint(1, 9 - result)
    return Arithmetic(result + right, "minus", right)
