"""GenEval's rule for the spatial relation between two boxes, shared by the generators and the judge.

GenEval (Ghosh et al., 2023) decides "A is left of B" from the boxes' centres and sizes: the centre offset
is shrunk on each axis by a fraction of the two boxes' summed extent (so boxes that nearly overlap relate
to nothing), then normalised by the raw offset's length; a relation holds when that direction's component
passes 0.5. y grows downward, so "above" is a negative dy. The rule is scale-free: boxes may be in pixels
or canvas fractions, as long as both use the same units.
"""

from __future__ import annotations

import math

from .scene import RELATIONS

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1), x right and y down."""

POSITION_THRESHOLD = 0.1  # GenEval: share of the summed box extent taken off the centre offset
DIRECTION_THRESHOLD = 0.5  # GenEval: a direction component beyond this makes the relation hold
CLEAR_MARGIN = 0.05  # generators demand this much more than GenEval, so a pixel of detector error can't flip it


def relation(box_a: Box, box_b: Box, threshold: float = DIRECTION_THRESHOLD) -> set[str]:
    """The relations of box A to box B under GenEval's rule.

    Args:
        box_a: the box that the relation describes, (x0, y0, x1, y1).
        box_b: the reference box, same units.
        threshold: the direction component a relation needs (GenEval: 0.5).

    Returns:
        A subset of ``{"left of", "right of", "above", "below"}``; empty when the boxes are too close
        to tell. Diagonal placements can hold two relations (e.g. ``{"left of", "above"}``).

    Example:
        >>> sorted(relation((0.0, 0.4, 0.2, 0.6), (0.6, 0.4, 0.8, 0.6)))
        ['left of']
    """
    offset_x = (box_a[0] + box_a[2]) / 2 - (box_b[0] + box_b[2]) / 2
    offset_y = (box_a[1] + box_a[3]) / 2 - (box_b[1] + box_b[3]) / 2
    extent_x = (box_a[2] - box_a[0]) + (box_b[2] - box_b[0])
    extent_y = (box_a[3] - box_a[1]) + (box_b[3] - box_b[1])
    revised_x = math.copysign(max(abs(offset_x) - POSITION_THRESHOLD * extent_x, 0.0), offset_x)
    revised_y = math.copysign(max(abs(offset_y) - POSITION_THRESHOLD * extent_y, 0.0), offset_y)
    if revised_x == 0.0 and revised_y == 0.0:
        return set()
    norm = math.hypot(offset_x, offset_y)
    dx, dy = revised_x / norm, revised_y / norm
    out = set()
    if dx < -threshold:
        out.add("left of")
    if dx > threshold:
        out.add("right of")
    if dy < -threshold:
        out.add("above")
    if dy > threshold:
        out.add("below")
    return out


def holds_clearly(name: str, box_a: Box, box_b: Box, margin: float = CLEAR_MARGIN) -> bool:
    """Whether relation ``name`` of A to B holds with ``margin`` to spare over GenEval's threshold."""
    if name not in RELATIONS:
        raise ValueError(f"unknown relation {name!r}; allowed: {', '.join(RELATIONS)}")
    return name in relation(box_a, box_b, DIRECTION_THRESHOLD + margin)
