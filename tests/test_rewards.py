"""Rewards: the world's rule rewards score rendered world images (right image 1, planted error lower), the
text, format and reflection rewards, and the registry (names, dotted paths, errors, weighted mean)."""

from __future__ import annotations

import dataclasses

import pytest

from thinkgen.rewards import (
    REWARDS,
    build_rewards,
    combine_rewards,
    format_reward,
    geneval_reward,
    get_reward,
    ned_reward,
    ocr_reward,
    reflection_reward,
    word_accuracy_reward,
    world_reward,
    world_strict_reward,
)
from thinkgen.rl.common import ScenarioRewards
from thinkgen.world.reflection import NO_FLAW_ANSWER
from thinkgen.world.scenarios import generate
from thinkgen.world.render import render


def _flawed(flaw: str, index: int = 0):
    """A reflection sample: its input image is the prompt's target with one planted error."""
    return generate("reflection", index, kind=flaw)


@pytest.mark.parametrize("scenario", ["composition", "reasoning", "edit", "reasoning_edit", "text"])
def test_world_reward_is_one_on_the_target_image(scenario):
    sample = generate(scenario, 3)
    image = sample.target_image()
    assert world_reward([sample.instruction], [image], specs=[sample.spec]) == [1.0]
    assert world_strict_reward([sample.instruction], [image], specs=[sample.spec.to_dict()]) == [1.0]


@pytest.mark.parametrize("flaw", ["count", "colour", "position", "missing_object"])
def test_planted_errors_lower_the_world_reward(flaw):
    sample = _flawed(flaw)
    flawed = sample.input_images()[0]
    partial = world_reward([sample.instruction], [flawed], specs=[sample.spec])[0]
    assert 0.0 <= partial < 1.0
    assert world_strict_reward([sample.instruction], [flawed], specs=[sample.spec]) == [0.0]
    assert geneval_reward([sample.instruction], [flawed], specs=[sample.spec])[0] < 1.0
    # The corrected scene (the reflection sample's target) is right again.
    assert world_reward([sample.instruction], [sample.target_image()], specs=[sample.spec]) == [1.0]


def test_text_rewards_read_the_words():
    sample = _flawed("wrong_word")
    right, wrong = sample.target_image(), sample.input_images()[0]
    spec = sample.spec
    for reward in (ocr_reward, word_accuracy_reward, ned_reward):
        scores = reward(["p", "p"], [right, wrong], specs=[spec, spec])
        assert scores[0] == 1.0 and scores[1] < 1.0, reward.__name__
    # No words asked for: the text rewards do not apply; GenEval ignores words and needs object clauses.
    plain = generate("composition", 0)
    assert ocr_reward(["p"], [plain.target_image()], specs=[plain.spec]) == [None]
    words_only = dataclasses.replace(spec, include=[], exclude=[])
    assert geneval_reward(["p"], [wrong], specs=[words_only]) == [None]
    assert world_reward(["p"], [right], specs=[None]) == [None]


def test_format_reward():
    completions = ["a thought</think>one red circle<|im_end|>", "</think><|im_end|>", "no close<|im_end|>",
                   "a</think>b</think>c<|im_end|>"]
    assert format_reward(["p"] * 4, [None] * 4, completions=completions) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(["p"], [None]) == [None]


def test_reflection_reward_judges_verdict_and_edit():
    flawed = _flawed("count")
    fine = _flawed("none")
    bad_image, fixed_image = flawed.input_images()[0], flawed.target_image()
    rows = [
        # (instruction, edited image, judged sample, expected)
        (NO_FLAW_ANSWER, bad_image, flawed, 0.0),  # missed the error
        (flawed.answer, fixed_image, flawed, 1.0),  # the edit fixed it
        ("add nothing", bad_image, flawed, None),  # an edit that fixed nothing: partial credit < 1
        ("the image already matches the prompt", fine.target_image(), fine, 1.0),  # right verdict
        ("make it blue", fine.target_image(), fine, 0.0),  # should have stopped
    ]
    scores = reflection_reward(
        ["p"] * len(rows), [r[1] for r in rows], instructions=[r[0] for r in rows], specs=[r[2].spec for r in rows],
        input_images=[r[2].input_images() for r in rows],
    )
    for score, (_, _, _, expected) in zip(scores, rows):
        assert score == expected if expected is not None else 0.0 <= score < 1.0
    assert reflection_reward(["p"], [bad_image], instructions=["x"], specs=[flawed.spec], input_images=[[]]) == [None]


def test_registry_names_paths_and_errors():
    assert get_reward("world") is world_reward and set(REWARDS) >= {"world", "ocr", "ned", "format", "reflection"}
    assert get_reward("rl_support.brightness").__name__ == "brightness"
    assert get_reward("rl_support:darkness").__name__ == "darkness"
    with pytest.raises(ValueError, match="unknown reward 'wrold'; valid names: .*world"):
        get_reward("wrold")
    with pytest.raises(ValueError, match="does not resolve"):
        get_reward("rl_support.nope")
    with pytest.raises(ValueError, match="not a callable"):
        get_reward("rl_support.TARGET_WORD")
    with pytest.raises(ValueError, match="must be a number > 0"):
        build_rewards({"world": 0})


def test_combination_is_a_weighted_mean_over_applicable_rewards():
    sample = generate("composition", 0)
    image = sample.target_image()
    terms = build_rewards({"world": 3.0, "ocr": 1.0, "rl_support.darkness": 1.0})
    total, named = combine_rewards(terms, ["p"], [image], specs=[sample.spec])
    darkness = named["rl_support.darkness"][0]
    assert named["ocr"] == [None]
    assert total[0] == pytest.approx((3.0 * 1.0 + darkness) / 4.0)

    rewards = ScenarioRewards({"composition": {"world": 1.0}, "text": {"ocr": 1.0}})
    text = generate("text", 0)
    scores, _ = rewards(["composition", "text"], ["a", "b"], [image, text.target_image()],
                        specs=[sample.spec, text.spec])
    assert scores == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"no reward applies to item 0 .*\[rewards.composition\]"):
        ScenarioRewards({"composition": {"ocr": 1.0}})(["composition"], ["a"], [image], specs=[sample.spec])
    with pytest.raises(ValueError, match="no rewards for scenario 'edit'"):
        rewards(["edit"], ["a"], [render(sample.target, 64)], specs=[sample.spec])


def test_reward_pool_scores_off_the_callers_thread_and_equals_the_serial_result():
    import rl_support

    scenarios = ["composition", "text", "composition", "edit", "text", "composition"]
    samples = [generate(s, i) for i, s in enumerate(scenarios)]
    prompts = [s.instruction for s in samples]
    images = [s.target_image() for s in samples]
    columns = {"specs": [s.spec for s in samples], "instructions": [s.answer for s in samples]}
    tables = {"composition": {"world": 1.0, "rl_support.thread_name": 0.5}, "text": {"ocr": 1.0},
              "default": {"world": 1.0}}
    serial = ScenarioRewards(tables)(scenarios, prompts, images, **columns)
    rl_support.SCORING_THREADS.clear()
    pooled_rewards = ScenarioRewards(tables, num_workers=3)
    pending = pooled_rewards.submit(scenarios, prompts, images, **columns)
    assert pending.result() == serial
    # The three composition items went out as three batches, each to a pool thread.
    assert len(rl_support.SCORING_THREADS) == 3
    assert all(name.startswith("reward") for name in rl_support.SCORING_THREADS)
    # Submissions chained in order equal one submission of all items.
    first = pooled_rewards.submit(scenarios[:2], prompts[:2], images[:2],
                                  **{k: v[:2] for k, v in columns.items()})
    rest = pooled_rewards.submit(scenarios[2:], prompts[2:], images[2:],
                                 **{k: v[2:] for k, v in columns.items()})
    assert type(first).chain([first, rest]).result() == serial
    pooled_rewards.close()
    with pytest.raises(ValueError, match="num_workers"):
        ScenarioRewards(tables, num_workers=-1)
