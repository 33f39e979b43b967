"""The nano world's vocabulary and its scene graph.

A scene is a list of flat shapes and short words on a plain canvas. Coordinates are normalised to the
canvas (x right, y down, both in [0, 1]) so one scene renders at any resolution. The difficulty dial is
:class:`WorldConfig`; its named presets live in :data:`PRESETS`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

# Palette: well separated in RGB so a colour judge never hesitates. Names follow GenEval's colour list
# (white is the background, so gray takes its place).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (245, 215, 0),
    "green": (30, 150, 50),
    "blue": (30, 80, 230),
    "purple": (130, 40, 180),
    "pink": (255, 130, 200),
    "brown": (125, 75, 25),
    "black": (20, 20, 20),
    "gray": (140, 140, 140),
}
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)
TEXT_RGB: tuple[int, int, int] = COLOURS["black"]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

Layout = Literal["grid", "free"]


def _check_choice(name: str, value: str, allowed: tuple[str, ...] | dict) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class WorldConfig:
    """The difficulty dial of the world. Every generator and the judge take one.

    Args:
        canvas_px: side of the square canvas in pixels.
        shapes: the shapes in play (a subset of :data:`SHAPES`).
        colours: the colours in play (a subset of :data:`COLOURS`).
        object_size: (min, max) side of an object's bounding box, as a fraction of the canvas.
        layout: ``"grid"`` puts object centres on the centres of a ``grid`` × ``grid`` layout;
            ``"free"`` places them anywhere without overlap.
        grid: cells per side for the grid layout.
        max_count: the largest count of one kind a prompt asks for.
        max_objects: the most objects in one scene.
        use_words: whether words appear at all (text rendering, relabel edits).
        max_words: the most words in one scene.
        word_length: (min, max) letters per word.
        text_height: height of rendered text as a fraction of the canvas.
    """

    canvas_px: int = 64
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    colours: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black")
    object_size: tuple[float, float] = (0.24, 0.28)
    layout: Layout = "grid"
    grid: int = 3
    max_count: int = 4
    max_objects: int = 4
    use_words: bool = True
    max_words: int = 1
    word_length: tuple[int, int] = (2, 4)
    text_height: float = 0.2

    def __post_init__(self) -> None:
        if not 32 <= self.canvas_px <= 2048:
            raise ValueError(f"canvas_px={self.canvas_px} is out of range; allowed: 32 to 2048")
        if len(self.shapes) < 1 or len(self.colours) < 2:
            raise ValueError("a world needs at least one shape and two colours")
        for s in self.shapes:
            _check_choice("shape", s, SHAPES)
        for c in self.colours:
            _check_choice("colour", c, COLOURS)
        lo, hi = self.object_size
        if not 0.02 <= lo <= hi <= 0.6:
            raise ValueError(f"object_size={self.object_size} must satisfy 0.02 <= min <= max <= 0.6")
        _check_choice("layout", self.layout, ("grid", "free"))
        if self.layout == "grid":
            if not 2 <= self.grid <= 16:
                raise ValueError(f"grid={self.grid} is out of range; allowed: 2 to 16")
            # Objects in neighbouring cells must never touch, or two same-coloured shapes would merge.
            if hi > 0.9 / self.grid:
                raise ValueError(
                    f"object_size max {hi} does not fit a {self.grid}x{self.grid} grid "
                    f"(at most 0.9 of the cell side, {0.9 / self.grid:.3f})"
                )
        if not 1 <= self.max_count <= self.max_objects:
            raise ValueError(f"max_count={self.max_count} must be in 1..max_objects ({self.max_objects})")
        if self.max_objects > self.capacity():
            raise ValueError(
                f"max_objects={self.max_objects} cannot fit on this canvas (capacity {self.capacity()}); "
                "use a larger grid, smaller objects or fewer objects"
            )
        wl, wh = self.word_length
        if not 2 <= wl <= wh <= 5:
            raise ValueError(f"word_length={self.word_length} must satisfy 2 <= min <= max <= 5")
        if self.use_words and self.max_words < 1:
            raise ValueError("use_words=True needs max_words >= 1")
        if not 0.05 <= self.text_height <= 0.4:
            raise ValueError(f"text_height={self.text_height} is out of range; allowed: 0.05 to 0.4")

    def capacity(self) -> int:
        """How many objects the canvas can hold (grid cells, or a packing estimate for free layout)."""
        if self.layout == "grid":
            return self.grid * self.grid
        side = self.object_size[1] * 1.25  # free layout keeps a margin between boxes
        return max(1, math.floor(1.0 / side) ** 2)

    def replace(self, **changes: Any) -> WorldConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown world setting(s) {sorted(unknown)}; allowed: {sorted(known)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)


PRESETS: dict[str, WorldConfig] = {
    # What ThinkGen-Nano is trained on: few shapes, large objects on a 3x3 grid, one short word.
    "nano": WorldConfig(),
    # A middle step: more shapes and colours, a finer grid, smaller objects.
    "medium": WorldConfig(
        canvas_px=128,
        shapes=SHAPES,
        colours=tuple(COLOURS),
        object_size=(0.14, 0.18),
        grid=5,
        max_count=4,
        max_objects=6,
        max_words=2,
        word_length=(2, 5),
        text_height=0.12,
    ),
    # The whole range: free placement, every shape and colour, varied sizes, up to three words.
    "full": WorldConfig(
        canvas_px=256,
        shapes=SHAPES,
        colours=tuple(COLOURS),
        object_size=(0.08, 0.18),
        layout="free",
        max_count=6,
        max_objects=8,
        max_words=3,
        word_length=(2, 5),
        text_height=0.08,
    ),
}


def get_preset(name: str) -> WorldConfig:
    """The named difficulty preset (``nano``, ``medium``, ``full``)."""
    _check_choice("world preset", name, PRESETS)
    return PRESETS[name]


@dataclass(frozen=True)
class SceneObject:
    """One flat shape: ``x``, ``y`` are its centre, ``size`` its bounding-box side (canvas fractions)."""

    shape: str
    colour: str
    x: float
    y: float
    size: float

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in canvas fractions."""
        h = self.size / 2
        return (self.x - h, self.y - h, self.x + h, self.y + h)


@dataclass(frozen=True)
class Word:
    """A rendered word: ``x``, ``y`` are the centre of its text box, ``height`` the text height."""

    text: str
    x: float
    y: float
    height: float


@dataclass(frozen=True)
class Scene:
    """What an image shows: shapes and words on a white canvas."""

    objects: tuple[SceneObject, ...] = ()
    words: tuple[Word, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [dataclasses.asdict(o) for o in self.objects],
            "words": [dataclasses.asdict(w) for w in self.words],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in data.get("objects", [])),
            words=tuple(Word(**w) for w in data.get("words", [])),
        )

    def count(self, shape: str, colour: str | None = None) -> int:
        return sum(1 for o in self.objects if o.shape == shape and (colour is None or o.colour == colour))


@dataclass
class Clause:
    """A GenEval-style clause: ``count`` objects of ``shape`` (optionally of ``colour``), optionally
    in ``position`` = (relation, index of another include clause).

    In ``include`` the image must hold at least ``count`` such objects; in ``exclude`` it must hold
    fewer than ``count`` (GenEval expresses "exactly n" as include n + exclude n+1).
    """

    shape: str
    count: int = 1
    colour: str | None = None
    position: tuple[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"class": self.shape, "count": self.count}
        if self.colour is not None:
            out["color"] = self.colour
        if self.position is not None:
            out["position"] = [self.position[0], self.position[1]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clause:
        pos = data.get("position")
        return cls(
            shape=data["class"],
            count=int(data.get("count", 1)),
            colour=data.get("color"),
            position=(pos[0], int(pos[1])) if pos else None,
        )


RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass
class Spec:
    """What a correct output image must show.

    ``include`` / ``exclude`` follow GenEval; ``texts`` are words that must be legible in the image and
    ``exclude_texts`` words that must not (a relabel edit removes the old word). ``tag`` names the
    sub-task (``single_object``, ``counting``, ``text``, ``recolour`` …) for per-task reporting.
    """

    tag: str
    include: list[Clause] = field(default_factory=list)
    exclude: list[Clause] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    exclude_texts: list[str] = field(default_factory=list)

    def check_vocabulary(self) -> None:
        """Raise ``ValueError`` naming the first clause that uses a shape, colour or relation the world lacks."""
        for kind, clauses in (("include", self.include), ("exclude", self.exclude)):
            for i, clause in enumerate(clauses):
                where = f"{kind}[{i}]"
                _check_choice(f"shape in {where}", clause.shape, SHAPES)
                if clause.colour is not None:
                    _check_choice(f"colour in {where}", clause.colour, COLOURS)
                if clause.count < 1:
                    raise ValueError(f"count in {where} must be >= 1, got {clause.count}")
                if clause.position is not None:
                    _check_choice(f"relation in {where}", clause.position[0], RELATIONS)
                    if not 0 <= clause.position[1] < len(self.include):
                        raise ValueError(
                            f"position in {where} refers to include[{clause.position[1]}], which does not exist"
                        )

    def check_fits(self, capacity: int, holder: str) -> None:
        """Raise ``ValueError`` when the include clauses ask for more objects than ``holder`` (say, "a canvas
        of the nano world") holds: ``capacity``."""
        needed = sum(clause.count for clause in self.include)
        if needed > capacity:
            raise ValueError(f"the spec's include clauses ask for {needed} objects; {holder} holds at most {capacity}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "include": [c.to_dict() for c in self.include],
            "exclude": [c.to_dict() for c in self.exclude],
            "texts": list(self.texts),
            "exclude_texts": list(self.exclude_texts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spec:
        return cls(
            tag=data["tag"],
            include=[Clause.from_dict(c) for c in data.get("include", [])],
            exclude=[Clause.from_dict(c) for c in data.get("exclude", [])],
            texts=list(data.get("texts", [])),
            exclude_texts=list(data.get("exclude_texts", [])),
        )
