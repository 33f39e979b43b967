"""Specs built from scenes, and the check of a scene against a spec.

The check reads the scene graph, not pixels: it says whether the scene a generator drew is one that the
spec accepts. Clause semantics follow GenEval, made colour-aware: an include clause needs at least
``count`` objects of its shape (of its colour, when it has one), all of them in its relation to every
object of the referenced clause; an exclude clause needs fewer than ``count`` objects of its shape (of its
colour, when it has one). Exclude clauses built here never carry a colour, so GenEval's colour-blind
exclude reads them the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from .geometry import relation
from .scene import Clause, Scene, SceneObject, Spec


def _matches(obj: SceneObject, clause: Clause) -> bool:
    return obj.shape == clause.shape and (clause.colour is None or obj.colour == clause.colour)


def spec_violations(spec: Spec, scene: Scene) -> list[str]:
    """Why ``scene`` fails ``spec``, one reason per broken clause; empty when the scene satisfies it."""
    reasons: list[str] = []
    groups: list[list[SceneObject] | None] = []
    for i, clause in enumerate(spec.include):
        found = [o for o in scene.objects if _matches(o, clause)]
        what = f"{clause.colour + ' ' if clause.colour else ''}{clause.shape}"
        if len(found) < clause.count:
            reasons.append(f"include[{i}]: expected at least {clause.count} {what}, found {len(found)}")
            groups.append(None)
            continue
        if clause.position is not None:
            name, target = clause.position
            reference = groups[target] if 0 <= target < len(groups) else None
            if reference is None:
                reasons.append(f"include[{i}]: no matched clause {target} for the {what} to be {name}")
                groups.append(None)
                continue
            if not all(name in relation(a.box(), b.box()) for a in found for b in reference):
                reasons.append(f"include[{i}]: the {what} is not {name} clause {target}")
                groups.append(None)
                continue
        groups.append(found)
    for i, clause in enumerate(spec.exclude):
        num_found = sum(_matches(o, clause) for o in scene.objects)
        if num_found >= clause.count:
            what = f"{clause.colour + ' ' if clause.colour else ''}{clause.shape}"
            reasons.append(f"exclude[{i}]: expected fewer than {clause.count} {what}, found {num_found}")
    shown = {w.text for w in scene.words}
    reasons += [f"text {t!r} is missing" for t in spec.texts if t not in shown]
    reasons += [f"text {t!r} should be gone" for t in spec.exclude_texts if t in shown]
    return reasons


def exact_spec(
    tag: str,
    scene: Scene,
    *,
    position: tuple[SceneObject, str, SceneObject] | None = None,
    absent_shapes: Iterable[str] = (),
    exclude_texts: Iterable[str] = (),
) -> Spec:
    """The spec that ``scene`` and only scenes like it satisfy: every (shape, colour) kind with its exact
    count, every word, and nothing more of each shape.

    Exactness comes from pairing colour-aware includes with colour-blind excludes: includes of
    n₁ red and n₂ blue circles plus "fewer than n₁ + n₂ + 1 circles" admit exactly those circles.

    Args:
        tag: the spec's sub-task name.
        scene: the scene to describe.
        position: ``(a, relation, b)``: objects of ``scene`` whose relation the spec also demands.
        absent_shapes: shapes that must not appear at all (e.g. the shape an edit removed).
        exclude_texts: words that must not appear.
    """
    kinds: list[tuple[str, str]] = []
    for obj in scene.objects:
        if (obj.shape, obj.colour) not in kinds:
            kinds.append((obj.shape, obj.colour))
    if position is not None:
        # GenEval resolves a position against an earlier clause, so the reference kind goes first.
        ref_kind = (position[2].shape, position[2].colour)
        kinds.remove(ref_kind)
        kinds.insert(0, ref_kind)
    include = []
    for shape, colour in kinds:
        clause = Clause(shape, count=scene.count(shape, colour), colour=colour)
        if position is not None and (shape, colour) == (position[0].shape, position[0].colour):
            clause.position = (position[1], 0)
        include.append(clause)
    shapes = list(dict.fromkeys(o.shape for o in scene.objects))
    exclude = [Clause(s, count=scene.count(s) + 1) for s in shapes]
    exclude += [Clause(s, count=1) for s in dict.fromkeys(absent_shapes) if s not in shapes]
    return Spec(
        tag=tag,
        include=include,
        exclude=exclude,
        texts=[w.text for w in scene.words],
        exclude_texts=list(exclude_texts),
    )
