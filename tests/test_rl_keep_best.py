"""``eval.keep_best``: the pipeline of the best held-out reward is exported to ``best/`` as it was at that
step, without disturbing training, survives a resume, and is what SepGRPO hands to the next stage."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rl_support import dit_config, mllm_config
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.rl import dit_grpo, mllm_grpo
from thinkgen.rl.common import add_lora, merged_cpu_copy
from thinkgen.rl.config import RLEvalConfig, ScheduleConfig, SepGRPOConfig
from thinkgen.rl.sepgrpo import train as train_sepgrpo
from thinkgen.train.config import RecipeError, load_recipe
from thinkgen.train.logs import read_metrics
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = Path(__file__).parents[1] / "recipes"
EVAL_EVERY_STEP = RLEvalConfig(every=1, num_prompts=2, num_inference_steps=2, keep_best=True)


def _keep_best(config, **eval_fields):
    return dataclasses.replace(config, eval=dataclasses.replace(EVAL_EVERY_STEP, **eval_fields))


def _wobbly_dit(output_dir, max_steps):
    """DiT-GRPO at a learning rate high enough that the held-out reward goes up and down."""
    config = _keep_best(dit_config(output_dir, max_steps=max_steps))
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=0.1))


def _best(output_dir):
    return json.loads((output_dir / "best" / "best.json").read_text())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_best_holds_the_weights_of_the_best_evaluation_and_survives_a_resume(tmp_path):
    full = dit_grpo.train(_wobbly_dit(tmp_path / "full", 4), pipeline=build_tiny_pipeline())
    logged = read_metrics(tmp_path / "full")
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4]  # the start is scored before the first update
    rewards = [r["eval_reward"] for r in logged]
    best_step = rewards.index(max(rewards))
    assert 0 < best_step < 4, f"the test needs a run whose best step is neither its start nor its end: {rewards}"
    assert _best(tmp_path / "full") == {"step": best_step, "eval_reward": max(rewards)}
    assert [r["eval_best_reward"] for r in logged] == [max(rewards[:k + 1]) for k in range(5)]
    assert [p.name for p in (tmp_path / "full").iterdir() if p.name.startswith("best")] == ["best"]

    # Killed at the best step, then resumed: the weights there are that run's `final`, and the resumed run
    # keeps its threshold (a worse last step does not replace `best`).
    stopped = dit_grpo.train(_wobbly_dit(tmp_path / "resumed", best_step), pipeline=build_tiny_pipeline())
    resumed = dit_grpo.train(_wobbly_dit(tmp_path / "resumed", 4), pipeline=build_tiny_pipeline())
    assert len(resumed.rewards) == 4 - best_step, "the second call must resume"
    assert _best(tmp_path / "resumed") == _best(tmp_path / "full")
    best = ThinkGenPipeline.from_pretrained(tmp_path / "full" / "best").transformer
    assert _same_weights(best, stopped.pipeline.transformer)
    assert not _same_weights(best, full.pipeline.transformer)


@pytest.mark.parametrize(("trainer", "make_config", "trained"),
                         [(mllm_grpo, mllm_config, "mllm"), (dit_grpo, dit_config, "transformer")])
def test_a_run_that_never_beats_its_start_keeps_the_start(tmp_path, trainer, make_config, trained):
    """At lr 0 every evaluation ties the start's, and only a strictly better one replaces it: ``best/`` is the
    starting pipeline, so a next stage starts from what RL could not improve on."""
    config = _keep_best(make_config(tmp_path, max_steps=2))
    config.optim.lr = 0.0  # set past the recipe check, which refuses lr 0 as a mistake
    start = build_tiny_pipeline()
    trainer.train(config, pipeline=copy.deepcopy(start))
    logged = read_metrics(tmp_path)
    assert logged[0]["step"] == 0 and {r["eval_reward"] for r in logged} == {logged[0]["eval_reward"]}
    assert _best(tmp_path)["step"] == 0
    best = ThinkGenPipeline.from_pretrained(tmp_path / "best")
    module = (lambda p: p.mllm.model) if trained == "mllm" else (lambda p: p.transformer)
    assert _same_weights(module(best), module(start))


@pytest.mark.parametrize(("trainer", "make_config"), [(mllm_grpo, mllm_config), (dit_grpo, dit_config)])
def test_exports_leave_lora_training_untouched(tmp_path, trainer, make_config):
    runs = {}
    for keep_best in (False, True):
        config = _keep_best(make_config(tmp_path / str(keep_best), max_steps=2), keep_best=keep_best)
        config.train.lora_rank = 4
        runs[keep_best] = trainer.train(config, pipeline=build_tiny_pipeline())
    assert runs[True].rewards == runs[False].rewards and runs[True].losses == runs[False].losses
    evaluated = [[r["eval_reward"] for r in read_metrics(tmp_path / str(k))] for k in (False, True)]
    assert evaluated[0] == evaluated[1]
    assert not (tmp_path / "False" / "best").exists()
    # The export holds the adapters merged, in the base layout.
    best = ThinkGenPipeline.from_pretrained(tmp_path / "True" / "best")
    module = best.mllm.model if trainer is mllm_grpo else best.transformer
    assert not any("lora" in name for name in module.state_dict())


@pytest.mark.parametrize(("part", "dtype"), [("mllm", torch.float32), ("mllm", torch.bfloat16),
                                             ("transformer", torch.float32)])
def test_merged_cpu_copy_equals_merge_and_unload_and_leaves_the_adapters_in_place(part, dtype):
    pipeline = build_tiny_pipeline()
    # In bf16, peft keeps the adapters in float32: the merge must round as peft's does.
    module = (pipeline.mllm.model if part == "mllm" else pipeline.transformer).to(dtype)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"] if part == "mllm" else ["to_q", "to_k", "to_v", "to_out.0"]
    peft_model = add_lora(module, rank=4, alpha=8.0, target_modules=targets)
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero, which would make any merge look right
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    live_before = {k: v.clone() for k, v in peft_model.state_dict().items()}

    merged = merged_cpu_copy(peft_model)
    reference = copy.deepcopy(peft_model).merge_and_unload()

    assert _same_weights(merged, reference)
    assert peft_model.state_dict().keys() == live_before.keys()
    assert all(torch.equal(v, live_before[k]) for k, v in peft_model.state_dict().items())
    adapted = next(n for n, m in peft_model.get_base_model().named_modules() if hasattr(m, "lora_A"))
    base_weight = peft_model.get_base_model().get_submodule(adapted).get_base_layer().weight
    assert not torch.equal(merged.get_submodule(adapted).weight, base_weight)
    # The copy runs: its non-persistent buffers (rotary frequencies) are real tensors, and it computes
    # what the model with adapters computes.
    assert not any(b.is_meta for b in merged.buffers())
    if part == "mllm":
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            assert torch.allclose(merged(input_ids=ids).logits.float(), peft_model(input_ids=ids).logits.float(),
                                  atol=1e-5 if dtype == torch.float32 else 0.1)


def test_keep_best_needs_evaluations():
    with pytest.raises(ValueError, match=r"keep_best needs every > 0"):
        RLEvalConfig(every=0, keep_best=True)
    with pytest.raises(RecipeError, match=r"eval\.keep_best needs every > 0 .*got every = 0"):
        load_recipe(RECIPES / "nano" / "stage5_dit_grpo.toml", ["eval.every=0", "eval.keep_best=true"])


def test_sepgrpo_hands_on_best_and_falls_back_to_final(tmp_path):
    root = tmp_path / "sep"
    stage4 = _keep_best(mllm_config(tmp_path, max_steps=2))
    # Stage 5 keeps no best: it hands on its `final`.
    stage5 = dataclasses.replace(dit_config(tmp_path, max_steps=1), eval=RLEvalConfig(every=0))
    result = train_sepgrpo(SepGRPOConfig(ScheduleConfig(output_dir=str(root)), stage4, stage5))
    stage4_dir, stage5_dir = root / "round0" / "stage4_mllm_grpo", root / "round0" / "stage5_dit_grpo"
    assert result.handed_on == [stage4_dir / "best", stage5_dir / "final"]
    assert json.loads((stage5_dir / "config.json").read_text())["model"]["pipeline"] == str(stage4_dir / "best")
    assert not (stage5_dir / "best").exists()
