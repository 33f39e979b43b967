"""The world's scenario generators: determinism, splits, specs against scenes, edits, knowledge."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from thinkgen.world import phrasing as ph
from thinkgen.world.composition import composition
from thinkgen.world.geometry import holds_clearly, relation
from thinkgen.world.knowledge import FACT_KINDS, FACTS, FACTS_BY_ID, HELD_OUT_FACTS, Arithmetic
from thinkgen.world.layout import place
from thinkgen.world.reasoning import reasoning
from thinkgen.world.reflection import FLAWS, NO_FLAW_ANSWER
from thinkgen.world.scenarios import SCENARIO_KINDS, SCENARIOS, generate
from thinkgen.world.scene import COLOURS, PRESETS, SHAPES, Clause, Scene, SceneObject, Spec, Word, WorldConfig
from thinkgen.world.specs import spec_violations
from thinkgen.world.splits import SPLITS, held_out_pairs, split_of_text
from thinkgen.world.vocab import WORDS, is_ocr_safe, words_for

NANO = PRESETS["nano"]


def _samples(scenario: str, n: int, *, split: str = "train", config: WorldConfig = NANO, seed: int = 0):
    return [generate(scenario, i, config=config, seed=seed, split=split) for i in range(n)]


# ---- geometry -------------------------------------------------------------------------------------


def test_relation_follows_geneval_rule():
    left, right = (0.0, 0.4, 0.2, 0.6), (0.6, 0.4, 0.8, 0.6)
    assert relation(left, right) == {"left of"}
    assert relation(right, left) == {"right of"}
    top, bottom = (0.4, 0.0, 0.6, 0.2), (0.4, 0.6, 0.6, 0.8)
    assert relation(top, bottom) == {"above"} and relation(bottom, top) == {"below"}
    # Diagonal neighbours on a 3x3 grid hold two relations at once.
    assert relation((0.0, 0.0, 0.25, 0.25), (0.33, 0.33, 0.58, 0.58)) == {"left of", "above"}
    # Centres closer than a tenth of the summed sizes relate to nothing.
    assert relation((0.0, 0.0, 0.5, 0.5), (0.05, 0.0, 0.55, 0.5)) == set()
    # Scale-free: pixels give the same answer as fractions.
    assert relation(tuple(v * 64 for v in left), tuple(v * 64 for v in right)) == {"left of"}


def test_holds_clearly_needs_margin_and_known_name():
    a, b = (0.0, 0.0, 0.25, 0.25), (0.33, 0.33, 0.58, 0.58)
    assert holds_clearly("left of", a, b)
    assert not holds_clearly("left of", a, b, margin=0.2)
    with pytest.raises(ValueError, match="unknown relation"):
        holds_clearly("near", a, b)


# ---- vocabulary and knowledge ---------------------------------------------------------------------


def test_vocabulary_is_large_short_and_ocr_safe():
    assert len(WORDS) >= 200
    assert all(2 <= len(w) <= 5 and is_ocr_safe(w) for w in WORDS)
    assert not set(WORDS) & (set(COLOURS) | set(SHAPES) | {"one", "two", "ten"})
    assert not is_ocr_safe("ill") and not is_ocr_safe("corn") and is_ocr_safe("cat")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_word_fits_the_canvas(preset):
    config = PRESETS[preset]
    for word in words_for(config):
        _, [placed] = place(config, random.Random(0), [], [word])
        assert placed.text == word


def test_knowledge_base_size_and_known_facts():
    assert len(FACTS) >= 60
    assert len(FACTS_BY_ID) == len(FACTS), "fact ids must be unique"
    kinds = Counter(f.kind for f in FACTS)
    assert set(kinds) == set(FACT_KINDS) and min(kinds.values()) >= 15
    assert HELD_OUT_FACTS <= set(FACTS_BY_ID)
    assert FACTS_BY_ID["count:tricycle"].value == 3
    assert FACTS_BY_ID["colour:sky"].value == "blue"
    assert FACTS_BY_ID["shape:full_moon"].value == "circle"
    assert FACTS_BY_ID["count:tricycle"].statement() == "A tricycle has three wheels."
    # Every held-out value is still taught by some training fact.
    train_values = {(f.kind, f.value) for f in FACTS if f.id not in HELD_OUT_FACTS}
    assert all((FACTS_BY_ID[i].kind, FACTS_BY_ID[i].value) in train_values for i in HELD_OUT_FACTS)
    assert Arithmetic(4, "minus", 1).value == 3 and Arithmetic(2, "plus", 2).statement() == "Two plus two is four."


# ---- determinism and splits -----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_coordinates_give_the_same_sample(scenario):
    first = [generate(scenario, i, seed=3).to_dict() for i in range(6)]
    assert [generate(scenario, i, seed=3).to_dict() for i in range(6)] == first
    # Random access: sample 5 made alone equals sample 5 made after the others.
    assert generate(scenario, 5, seed=3).to_dict() == first[5]
    other_seed = [generate(scenario, i, seed=4).to_dict() for i in range(6)]
    assert other_seed != first


def test_splits_are_disjoint_in_prompt_text():
    texts = {}
    for split in SPLITS:
        samples = [s for sc in SCENARIOS for s in _samples(sc, 40, split=split)]
        assert all(split_of_text(s.instruction) == split for s in samples)
        texts[split] = {" ".join(s.instruction.lower().split()) for s in samples}
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]


def _pairs(sample):
    return {(o.shape, o.colour) for scene in (*sample.inputs, sample.target) for o in scene.objects}


def test_held_out_combinations_only_in_test():
    held_pairs = held_out_pairs(NANO)
    assert len(held_pairs) == 4
    for split in ("train", "val"):
        for scenario in SCENARIOS:
            for s in _samples(scenario, 60, split=split):
                assert not _pairs(s) & held_pairs, (split, s.instruction)
                assert not set(s.meta.get("facts", ())) & HELD_OUT_FACTS, (split, s.instruction)
                assert s.meta["held_out"] is False
    test = [s for sc in ("composition", "reasoning", "reasoning_edit") for s in _samples(sc, 80, split="test")]
    assert any(_pairs(s) & held_pairs for s in test)
    assert any(set(s.meta.get("facts", ())) & HELD_OUT_FACTS for s in test)
    assert all(s.meta["held_out"] == bool(_pairs(s) & held_pairs or set(s.meta.get("facts", ())) & HELD_OUT_FACTS)
               for s in test)


# ---- specs against scenes -------------------------------------------------------------------------


def test_spec_check_catches_wrong_scenes():
    red_circle = SceneObject("circle", "red", 0.2, 0.5, 0.2)
    blue_square = SceneObject("square", "blue", 0.8, 0.5, 0.2)
    scene = Scene((red_circle, blue_square), (Word("cat", 0.5, 0.1, 0.2),))
    ok = Spec("x", include=[Clause("square"), Clause("circle", colour="red", position=("left of", 0))],
              exclude=[Clause("circle", 2)], texts=["cat"])
    assert spec_violations(ok, scene) == []
    assert spec_violations(Spec("x", include=[Clause("circle", colour="blue")]), scene)
    assert spec_violations(Spec("x", include=[Clause("square"), Clause("circle", position=("right of", 0))]), scene)
    assert spec_violations(Spec("x", include=[Clause("circle", 2)]), scene)
    assert spec_violations(Spec("x", exclude=[Clause("circle", 1)]), scene)
    assert spec_violations(Spec("x", texts=["dog"]), scene)
    assert spec_violations(Spec("x", exclude_texts=["cat"]), scene)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_target_satisfies_its_spec(scenario, preset):
    for s in _samples(scenario, 40, config=PRESETS[preset]):
        assert spec_violations(s.spec, s.target) == [], (s.instruction, s.spec.to_dict())
        assert s.task_type == ("edit" if s.inputs else "t2i")
        assert s.answer and s.instruction
        config = PRESETS[preset]
        for scene in (*s.inputs, s.target):
            assert len(scene.objects) <= config.max_objects
            assert len(scene.words) <= config.max_words


def test_composition_tags_and_exact_counts():
    tags = Counter()
    for s in _samples("composition", 150):
        tags[s.spec.tag] += 1
        if s.spec.tag == "counting":
            n = s.spec.include[0].count
            assert s.spec.exclude[0].count == n + 1 and 2 <= n <= NANO.max_count
            assert len(s.target.objects) == n
            assert s.answer.split()[0] == ph.number_word(n)
        if s.spec.tag == "position":
            name, ref = s.spec.include[1].position
            a, b = (next(o for o in s.target.objects if o.shape == c.shape) for c in s.spec.include[1::-1])
            assert ref == 0 and holds_clearly(name, a.box(), b.box())
    assert set(tags) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


def test_a_position_answer_follows_from_its_prompt():
    """Prompts that read "X <relation> Y" are answered "X <that relation> Y", whichever object the scene
    relates to which: the answer is a function of the prompt, not of a hidden draw. "Y with X <relation>
    it" is answered "X <relation> Y"."""
    phrases = sorted(((p, r) for r, ps in ph.RELATION_PHRASES.items() for p in ps), key=lambda pr: -len(pr[0]))

    def shapes_and_relation(text: str) -> tuple[list[str], str]:
        name = next(r for p, r in phrases if f" {p} " in text)
        return [w.rstrip("s") for w in text.split() if w.rstrip("s") in NANO.shapes], name

    forms = Counter()
    for i in range(120):
        s = generate("composition", i, kind="position")
        (x, y), name = shapes_and_relation(s.instruction)
        (first, second), said = shapes_and_relation(s.answer)
        form = "with" if re.search(r" with .+ it\b", s.instruction) else "in order"
        assert (first, said, second) == ((y, name, x) if form == "with" else (x, name, y)), (s.instruction, s.answer)
        forms[form] += 1
    assert forms["with"] > 20 and forms["in order"] > 60


def test_phrasing_varies():
    prompts = [s.instruction for s in _samples("composition", 300)]
    assert len(set(prompts)) > 150
    joined = " | ".join(prompts)
    for marker in ("that is", "coloured", "a photo of", "one ", "a single"):
        assert marker in joined, marker
    counting = [composition(random.Random(i), NANO, "counting") for i in range(60)]
    assert any(any(ch.isdigit() for ch in d.instruction) for d in counting)
    assert any(not any(ch.isdigit() for ch in d.instruction) for d in counting)


# ---- edits ----------------------------------------------------------------------------------------


def _diff(before: Scene, after: Scene) -> list[tuple[SceneObject, SceneObject]]:
    return [(a, b) for a, b in zip(before.objects, after.objects) if a != b]


def _check_edit(kind: str, src: Scene, dst: Scene, answer: str) -> None:
    if kind not in ("relabel",):
        assert src.words == dst.words, "words must stay untouched"
    if kind == "recolour":
        [(a, b)] = _diff(src, dst)
        assert len(src.objects) == len(dst.objects)
        assert (a.shape, a.x, a.y, a.size) == (b.shape, b.x, b.y, b.size) and a.colour != b.colour
        assert answer.endswith(b.colour)
    elif kind == "add":
        k = len(src.objects)
        assert dst.objects[:k] == src.objects and len(dst.objects) > k
        added = dst.objects[k:]
        assert len({(o.shape, o.colour) for o in added}) == 1
        assert answer == f"add {ph.noun_phrase(len(added), added[0].shape, added[0].colour)}"
    elif kind == "remove":
        assert len(dst.objects) == len(src.objects) - 1
        assert all(o in src.objects for o in dst.objects)
        [gone] = [o for o in src.objects if o not in dst.objects]
        assert answer.endswith(gone.shape)
    elif kind == "move":
        [(a, b)] = _diff(src, dst)
        assert (a.shape, a.colour, a.size) == (b.shape, b.colour, b.size) and (a.x, a.y) != (b.x, b.y)
    elif kind == "replace":
        [(a, b)] = _diff(src, dst)
        assert (a.x, a.y, a.size) == (b.x, b.y, b.size) and a.shape != b.shape
        assert answer.endswith(b.shape)
    elif kind == "relabel":
        assert src.objects == dst.objects
        [old], [new] = src.words, dst.words
        assert old.text != new.text and (old.x, old.y) == (new.x, new.y)
        assert answer == f'change the word "{old.text}" to "{new.text}"'
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", SCENARIO_KINDS["edit"])
def test_edits_change_exactly_what_they_say(kind):
    for i in range(30):
        s = generate("edit", i, kind=kind)
        [src] = s.inputs
        _check_edit(kind, src, s.target, s.answer)
        assert spec_violations(s.spec, src), "the input must not already satisfy the edit's spec"
        assert s.spec.tag == kind


# ---- reasoning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SCENARIO_KINDS["reasoning"])
def test_reasoning_answers_follow_the_facts(kind):
    for i in range(25):
        s = generate("reasoning", i, kind=kind)
        facts = [FACTS_BY_ID[f] for f in s.meta["facts"]]
        objs = s.target.objects
        assert s.reasoning and all(f.statement() in s.reasoning for f in facts)
        by_kind = {f.kind: f for f in facts}
        if kind == "relation":
            (clause_b, clause_a) = s.spec.include
            assert {clause_a.colour, clause_b.colour} <= {f.value for f in facts}
            assert clause_a.colour == facts[0].value and clause_b.colour == facts[1].value
            continue
        if kind == "arithmetic":
            left, op, right = s.meta["arithmetic"]
            expected_count = left + right if op == "plus" else left - right
        elif "count" in by_kind:
            expected_count = by_kind["count"].value
        else:
            expected_count = len(objs)
        assert len(objs) == expected_count
        assert s.answer.split()[0] == ph.number_word(expected_count)
        if "colour" in by_kind:
            assert {o.colour for o in objs} == {by_kind["colour"].value}
        if "shape" in by_kind:
            assert {o.shape for o in objs} == {by_kind["shape"].value}


@pytest.mark.parametrize("kind", SCENARIO_KINDS["reasoning_edit"])
def test_reasoning_edits_follow_the_facts(kind):
    for i in range(25):
        s = generate("reasoning_edit", i, kind=kind)
        [fact] = [FACTS_BY_ID[f] for f in s.meta["facts"]]
        [src] = s.inputs
        _check_edit(kind, src, s.target, s.answer)
        if kind == "recolour":
            [(_, b)] = _diff(src, s.target)
            assert b.colour == fact.value
        elif kind == "add":
            assert len(s.target.objects) - len(src.objects) == fact.value
        elif kind == "replace":
            [(a, b)] = _diff(src, s.target)
            assert b.shape == fact.value and b.colour == a.colour
        else:
            [gone] = [o for o in src.objects if o not in s.target.objects]
            assert gone.colour == fact.value and [o.colour for o in src.objects].count(fact.value) == 1


def test_reasoning_example_from_the_design():
    # "as many triangles as a tricycle has wheels, coloured like the sky" → three blue triangles
    for i in range(400):
        d = reasoning(random.Random(i), NANO, "count_colour")
        if set(d.meta["facts"]) == {"count:tricycle", "colour:sky"} and d.target.objects[0].shape == "triangle":
            assert d.answer == "three blue triangles"
            assert "tricycle" in d.instruction and "sky" in d.instruction
            return
    pytest.fail("the tricycle/sky combination never came up")


# ---- reflection -----------------------------------------------------------------------------------


def test_reflection_flaws_are_visible_and_fixed():
    samples = _samples("reflection", 200)
    kinds = Counter(s.meta["kind"] for s in samples)
    assert 0.15 <= kinds["none"] / len(samples) <= 0.35
    assert set(kinds) == {*FLAWS, "none"}
    for s in samples:
        [flawed] = s.inputs
        assert spec_violations(s.spec, s.target) == []
        if s.meta["kind"] == "none":
            assert flawed == s.target and s.answer == NO_FLAW_ANSWER
        else:
            assert spec_violations(s.spec, flawed), s.meta
            assert s.answer != NO_FLAW_ANSWER and s.answer in s.reasoning
            assert s.meta["prompt"] in s.instruction


@pytest.mark.parametrize("flaw", [*FLAWS, "none"])
def test_reflection_flaw_can_be_forced(flaw):
    s = generate("reflection", 0, kind=flaw)
    assert s.meta["kind"] == flaw


# ---- the difficulty dial and bad requests ---------------------------------------------------------


def test_generators_respect_a_narrow_world():
    config = WorldConfig(shapes=("circle", "square"), colours=("red", "blue", "green"), max_count=2,
                         max_objects=3, use_words=False)
    for scenario in ("composition", "edit", "reasoning", "reasoning_edit", "reflection"):
        for s in _samples(scenario, 40, config=config):
            for scene in (*s.inputs, s.target):
                assert all(o.shape in config.shapes and o.colour in config.colours for o in scene.objects)
                assert len(scene.objects) <= config.max_objects and not scene.words
            assert all(c.count <= config.max_count for c in s.spec.include)
    with pytest.raises(ValueError, match="use_words"):
        generate("text", 0, config=config)
    with pytest.raises(ValueError, match="relabel"):
        generate("edit", 0, config=config, kind="relabel")


def test_impossible_requests_raise_clear_errors():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="count=9 is out of range"):
        composition(rng, NANO, "counting", count=9)
    one_shape = WorldConfig(shapes=("circle",))
    with pytest.raises(ValueError, match="at least two shapes"):
        composition(rng, one_shape, "position")
    with pytest.raises(ValueError, match="unknown scenario 'paint'"):
        generate("paint", 0)
    with pytest.raises(ValueError, match="unknown split"):
        generate("edit", 0, split="dev")
    with pytest.raises(ValueError, match="unknown kind 'zoom'"):
        generate("edit", 0, kind="zoom")
    with pytest.raises(ValueError, match="index=-1"):
        generate("edit", -1)
