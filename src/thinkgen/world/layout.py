"""Placing objects and words on the canvas without overlap, on a grid or freely.

Everything takes an explicit ``random.Random`` so that a seed fixes the result.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from .render import word_width
from .scene import Scene, SceneObject, Word, WorldConfig

_FREE_MARGIN = 0.02  # gap between boxes in free layout (canvas fraction), so shapes never touch
_MAX_TRIES = 400

Box = tuple[float, float, float, float]


def _overlaps(a: Box, b: Box, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def word_box_size(text: str, config: WorldConfig) -> tuple[float, float]:
    """(width, height) of a word's box, canvas fractions, with a little padding for the OCR."""
    return word_width(text, config.text_height, config.canvas_px) + 0.04, config.text_height * 1.2


def _place_grid(
    config: WorldConfig, rng: random.Random, sizes: Sequence[float], texts: Sequence[str]
) -> tuple[list[tuple[float, float]], list[Word]]:
    n, cell = config.grid, 1.0 / config.grid
    free = [[True] * n for _ in range(n)]  # free[row][col]
    words = []
    # Words first: each needs a run of consecutive free cells in one row.
    for text in texts:
        width, height = word_box_size(text, config)
        span = math.ceil(width / cell - 1e-9)
        if span > n or height > cell:
            raise ValueError(f"word {text!r} does not fit a {n}x{n} grid at text_height {config.text_height}")
        runs = [(r, c) for r in range(n) for c in range(n - span + 1) if all(free[r][c : c + span])]
        if not runs:
            raise ValueError(f"no room left for word {text!r} on a {n}x{n} grid")
        r, c = rng.choice(runs)
        for k in range(c, c + span):
            free[r][k] = False
        words.append(Word(text, (c + span / 2) * cell, (r + 0.5) * cell, config.text_height))
    cells = [(r, c) for r in range(n) for c in range(n) if free[r][c]]
    if len(sizes) > len(cells):
        raise ValueError(f"{len(sizes)} objects do not fit the {len(cells)} free cells of a {n}x{n} grid")
    chosen = rng.sample(cells, len(sizes))
    return [((c + 0.5) * cell, (r + 0.5) * cell) for r, c in chosen], words


def centred_box(x: float, y: float, width: float, height: float) -> Box:
    """The ``width`` × ``height`` box centred on ``(x, y)``, as (x0, y0, x1, y1)."""
    return (x - width / 2, y - height / 2, x + width / 2, y + height / 2)


def _free_spot(
    rng: random.Random, width: float, height: float, taken: Sequence[Box], accept: Callable[[Box], bool] | None = None
) -> tuple[float, float] | None:
    """A random centre whose box keeps the free layout's gap to every ``taken`` box (and that ``accept`` takes),
    or ``None`` after :data:`_MAX_TRIES` draws."""
    for _ in range(_MAX_TRIES):
        x, y = rng.uniform(width / 2, 1 - width / 2), rng.uniform(height / 2, 1 - height / 2)
        box = centred_box(x, y, width, height)
        if not any(_overlaps(box, t, _FREE_MARGIN) for t in taken) and (accept is None or accept(box)):
            return x, y
    return None


def _place_free(
    config: WorldConfig, rng: random.Random, sizes: Sequence[float], texts: Sequence[str]
) -> tuple[list[tuple[float, float]], list[Word]]:
    boxes: list[Box] = []

    def drop(w: float, h: float, what: str) -> tuple[float, float]:
        if w > 1.0 or h > 1.0:
            raise ValueError(f"{what} is larger than the canvas")
        spot = _free_spot(rng, w, h, boxes)
        if spot is None:
            raise ValueError(f"no room left for {what} after {_MAX_TRIES} tries; the scene is too crowded")
        boxes.append(centred_box(*spot, w, h))
        return spot

    words = []
    for text in texts:
        width, height = word_box_size(text, config)
        x, y = drop(width, height, f"word {text!r}")
        words.append(Word(text, x, y, config.text_height))
    centres = [drop(s, s, f"object {i}") for i, s in enumerate(sizes)]
    return centres, words


def place(
    config: WorldConfig, rng: random.Random, sizes: Sequence[float], texts: Sequence[str] = ()
) -> tuple[list[tuple[float, float]], list[Word]]:
    """Centres for objects of the given ``sizes`` and positioned :class:`Word` s for ``texts``.

    Raises:
        ValueError: when the items cannot fit the canvas of ``config``.
    """
    if config.layout == "grid":
        return _place_grid(config, rng, sizes, texts)
    return _place_free(config, rng, sizes, texts)


def place_among(
    config: WorldConfig,
    rng: random.Random,
    width: float,
    height: float,
    taken: Sequence[Box],
    accept: Callable[[Box], bool] | None = None,
) -> tuple[float, float]:
    """The centre of a ``width`` × ``height`` box (canvas fractions) placed by the rules of ``config`` clear of
    the ``taken`` boxes of a laid-out scene, and with ``accept`` true of its box: on a grid, a random run of
    free cells in one row (a cell is free when less than a tenth of it is covered, so a box found a pixel off
    in an image does not take its neighbour); freely, a random spot at the free layout's gap.

    Raises:
        ValueError: when no place is left.
    """
    if config.layout == "grid":
        n, cell = config.grid, 1.0 / config.grid
        span = max(1, math.ceil(width / cell - 1e-9))

        def covered(box: Box, other: Box) -> float:
            w = min(box[2], other[2]) - max(box[0], other[0])
            h = min(box[3], other[3]) - max(box[1], other[1])
            return max(w, 0.0) * max(h, 0.0)

        free = [[all(covered((c * cell, r * cell, (c + 1) * cell, (r + 1) * cell), t) < 0.1 * cell * cell
                     for t in taken) for c in range(n)] for r in range(n)]
        options = []
        for r in range(n):
            for c in range(n - span + 1):
                x, y = (c + span / 2) * cell, (r + 0.5) * cell
                if all(free[r][c : c + span]) and (accept is None or accept(centred_box(x, y, width, height))):
                    options.append((x, y))
        if not options:
            raise ValueError(f"no free run of {span} cells left on the {n}x{n} grid")
        return rng.choice(options)
    spot = _free_spot(rng, width, height, taken, accept)
    if spot is None:
        raise ValueError(f"no free place for a {width:.2f} x {height:.2f} box after {_MAX_TRIES} tries")
    return spot


def sample_size(config: WorldConfig, rng: random.Random) -> float:
    return rng.uniform(*config.object_size)


def compose(
    config: WorldConfig,
    rng: random.Random,
    items: Sequence[tuple[str, str]],
    texts: Sequence[str] = (),
) -> Scene:
    """A scene with one object per ``(shape, colour)`` in ``items`` and the words ``texts``, placed at random."""
    sizes = [sample_size(config, rng) for _ in items]
    centres, words = place(config, rng, sizes, texts)
    objects = tuple(SceneObject(s, c, x, y, size) for (s, c), (x, y), size in zip(items, centres, sizes))
    return Scene(objects=objects, words=tuple(words))


def random_scene(
    config: WorldConfig, rng: random.Random, num_objects: int | None = None, num_words: int | None = None,
    vocabulary: Sequence[str] = (),
) -> Scene:
    """A scene of random objects (and random words from ``vocabulary``) within the limits of ``config``."""
    if num_objects is None:
        num_objects = rng.randint(1, config.max_objects)
    if num_words is None:
        num_words = rng.randint(0, config.max_words) if config.use_words and vocabulary else 0
    items = [(rng.choice(config.shapes), rng.choice(config.colours)) for _ in range(num_objects)]
    texts = [rng.choice(vocabulary) for _ in range(num_words)]
    return compose(config, rng, items, texts)
