"""The six scenarios of the world, and deterministic sample streams over them.

Sample ``index`` of ``split`` under ``seed`` is always the same: its random stream comes from a hash of
those coordinates (:func:`~thinkgen.world.splits.sample_rng`), so a dataset can be indexed in any order
and resumed anywhere. A draw is kept only if its prompt belongs to the split and, outside the test split,
it shows no held-out pair or fact.

Example:
    >>> from thinkgen.world.scenarios import generate
    >>> sample = generate("reasoning", 0, split="train")
    >>> image = sample.target_image()
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence

from .composition import COMPOSITION_TASKS, composition, text
from .edits import EDIT_KINDS, edit
from .reasoning import REASONING_EDIT_KINDS, REASONING_KINDS, reasoning, reasoning_edit
from .reflection import FLAWS, reflection
from .sample import Draft, WorldSample
from .scene import PRESETS, WorldConfig
from .splits import check_split, sample_rng, split_of_text, uses_held_out


def _text(rng: random.Random, config: WorldConfig, kind: str | None) -> Draft:
    return text(rng, config)


_GENERATORS: dict[str, Callable[[random.Random, WorldConfig, str | None], Draft]] = {
    "composition": composition,
    "text": _text,
    "edit": edit,
    "reasoning": reasoning,
    "reasoning_edit": reasoning_edit,
    "reflection": reflection,
}

SCENARIOS: tuple[str, ...] = tuple(_GENERATORS)
"""Scenario names, in a fixed order."""

SCENARIO_KINDS: dict[str, tuple[str, ...]] = {
    "composition": COMPOSITION_TASKS,
    "text": ("text",),
    "edit": EDIT_KINDS,
    "reasoning": REASONING_KINDS,
    "reasoning_edit": REASONING_EDIT_KINDS,
    "reflection": (*FLAWS, "none"),
}
"""The sub-kinds each scenario can be asked for (``kind`` of :func:`generate`)."""

MAX_DRAWS = 2000  # draws before a split is declared empty for this scenario (test keeps ~1 prompt in 10)

ScenarioMix = str | Sequence[str] | Mapping[str, float]


def check_scenario(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of :data:`SCENARIOS`."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}")


def resolve_scenarios(name: str) -> tuple[str, ...]:
    """``"all"`` → every scenario; a scenario name → that one alone."""
    if name == "all":
        return SCENARIOS
    if name not in _GENERATORS:
        raise ValueError(f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}, all")
    return (name,)


def generate(
    scenario: str,
    index: int,
    *,
    config: WorldConfig | None = None,
    seed: int = 0,
    split: str = "train",
    kind: str | None = None,
) -> WorldSample:
    """Sample ``index`` of ``scenario`` in ``split``.

    Args:
        scenario: one of :data:`SCENARIOS`.
        index: the sample's position in the stream (>= 0).
        config: the world (default: the ``nano`` preset).
        seed: the stream's seed.
        split: ``train``, ``val`` or ``test``.
        kind: force a sub-kind (see :data:`SCENARIO_KINDS`); ``None`` lets the stream pick.

    Returns:
        The sample; ``meta["held_out"]`` says whether it uses a held-out pair or fact (test only).

    Raises:
        ValueError: for an unknown scenario, split or kind, a negative index, or a request the world
            cannot satisfy.
    """
    check_scenario(scenario)
    check_split(split)
    if index < 0:
        raise ValueError(f"index={index} must be >= 0")
    if kind is not None and kind not in SCENARIO_KINDS[scenario]:
        raise ValueError(
            f"unknown kind {kind!r} for scenario {scenario!r}; allowed: {', '.join(SCENARIO_KINDS[scenario])}"
        )
    config = config or PRESETS["nano"]
    rng = sample_rng(seed, split, scenario, index)
    for _ in range(MAX_DRAWS):
        draft = _GENERATORS[scenario](rng, config, kind)
        if split_of_text(draft.instruction) != split:
            continue
        held_out = uses_held_out(config, (*draft.inputs, draft.target), draft.meta.get("facts", ()))
        if held_out and split != "test":
            continue
        return WorldSample(
            scenario=scenario,
            task_type="edit" if draft.inputs else "t2i",
            instruction=draft.instruction,
            reasoning=draft.reasoning,
            answer=draft.answer,
            spec=draft.spec,
            target=draft.target,
            inputs=draft.inputs,
            config=config,
            split=split,
            index=index,
            seed=seed,
            meta={**draft.meta, "held_out": held_out},
        )
    raise ValueError(
        f"found no {scenario!r} prompt for split {split!r} in {MAX_DRAWS} draws; this world's prompts are too few"
    )


def pick_scenario(mix: ScenarioMix, *, seed: int, split: str, index: int) -> str:
    """The scenario of stream position ``index``.

    Args:
        mix: a scenario name; a sequence of names (taken in turn); or a mapping of name → weight
            (drawn from the index's own random stream, so still deterministic).
    """
    if isinstance(mix, str):
        names: Sequence[str] = (mix,)
    elif isinstance(mix, Mapping):
        names = list(mix)
        weights = [float(mix[n]) for n in names]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"scenario weights {dict(mix)} must be >= 0 with a positive sum")
        for name in names:
            check_scenario(name)
        return sample_rng(seed, split, "mix", index).choices(names, weights)[0]
    else:
        names = list(mix)
    if not names:
        raise ValueError("the scenario mix is empty")
    for name in names:
        check_scenario(name)
    return names[index % len(names)]


def check_kinds(kinds: Mapping[str, object], scenarios: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every entry of ``kinds`` maps one of ``scenarios`` to a non-empty list of its
    sub-kinds (:data:`SCENARIO_KINDS`). Messages start with ``kinds.<scenario>``."""
    for name, names in kinds.items():
        if name not in scenarios:
            raise ValueError(f"kinds.{name}: {name!r} is not one of the scenarios drawn ({', '.join(scenarios)})")
        allowed = SCENARIO_KINDS[name]
        if not (isinstance(names, list) and names and all(k in allowed for k in names)):
            raise ValueError(f"kinds.{name} must be a non-empty list of {', '.join(allowed)}; got {names!r}")


def pick_kind(kinds: Mapping[str, Sequence[str]], scenario: str, *, seed: int, split: str, index: int) -> str | None:
    """The sub-kind of stream position ``index``, a sample of ``scenario``: drawn evenly from
    ``kinds[scenario]`` (from the index's own random stream), or ``None`` (the world's own draw of every kind)
    where ``kinds`` does not name the scenario."""
    names = kinds.get(scenario)
    return sample_rng(seed, split, "kind", index).choice(names) if names else None


def iter_samples(
    mix: ScenarioMix,
    *,
    config: WorldConfig | None = None,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
    stop: int | None = None,
) -> Iterator[WorldSample]:
    """Samples ``start``, ``start + 1``, … (up to ``stop``, or forever) of a scenario mix."""
    index = start
    while stop is None or index < stop:
        yield generate(pick_scenario(mix, seed=seed, split=split, index=index), index,
                       config=config, seed=seed, split=split)
        index += 1
