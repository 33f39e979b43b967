"""DiT-GRPO (Flow-GRPO): re-scoring a rollout reproduces its log-probs exactly (ratio 1 at the first
update), the clipped loss and the KL follow Flow-GRPO, only the DiT learns, a toy reward rises (and its
opposite falls), LoRA trains adapters only, and an interrupted run resumes exactly."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rl_support import dit_config
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.rl.common import PromptSource
from thinkgen.rl.dit_grpo import flow_grpo_loss, mean_kl, rollout_group, step_log_prob, train, train_timesteps
from thinkgen.sampling import flow_timesteps
from thinkgen.train.logs import read_metrics
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rescoring_a_rollout_reproduces_its_log_probs(tmp_path):
    pipeline = build_tiny_pipeline()
    config = dit_config(tmp_path, scenario="edit")
    timesteps = flow_timesteps(4, 16, 16).tolist()
    item = PromptSource(config.prompts).get(0)
    assert item.images  # an edit: the velocity uses CFG and reference images
    group = rollout_group(pipeline, pipeline.transformer, item, config, timesteps, noise_seed=0)
    trajectory, old = group.latents[0], group.log_probs[0]
    assert trajectory.shape == (5, 4, 3, 16, 16) and old.shape == (4, 4) and len(group.images) == 4
    for j in range(4):
        out = step_log_prob(pipeline.transformer, trajectory[j], timesteps[j], timesteps[j + 1], group.conditions,
                            config.sample, config.grpo.noise_level, next_latents=trajectory[j + 1])
        assert torch.equal(out.log_prob, old[j])  # ratio exactly 1 under the rollout's weights
        # The step's log-prob is the Gaussian density of the recorded latents, averaged over elements.
        density = torch.distributions.Normal(out.mean, out.std).log_prob(trajectory[j + 1]).mean(dim=(1, 2, 3))
        assert torch.allclose(out.log_prob, density, atol=1e-5)
    # The same seed draws the same rollouts.
    again = rollout_group(pipeline, pipeline.transformer, item, config, timesteps, noise_seed=0)
    assert torch.equal(again.latents[0], trajectory)


def test_flow_grpo_loss_clips_the_ratio_and_kl_is_the_mean_distance():
    old = torch.zeros(4)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5])).requires_grad_(True)
    loss, stats = flow_grpo_loss(log_prob, old, advantages, clip_range=0.2)
    loss.backward()
    # Clipped where the ratio left 1 ± ε in the advantage's favour (no gradient), not where it went against it.
    assert log_prob.grad[0] == 0 and log_prob.grad[3] == 0 and log_prob.grad[1] != 0 and log_prob.grad[2] != 0
    assert stats["clip_frac"] == 1.0
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    same, stats = flow_grpo_loss(old, old, advantages, clip_range=1e-4)
    assert same.item() == 0.0 and stats == {"clip_frac": 0.0, "approx_kl": 0.0}
    mean, ref = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    std = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)
    assert torch.allclose(mean_kl(mean, ref, std), torch.tensor([2.0, 0.5]))


def test_trained_timesteps():
    grpo = dit_config(".").grpo
    assert train_timesteps(grpo, 10, seed=0, step=3) == train_timesteps(grpo, 10, seed=0, step=3)
    chosen = {tuple(train_timesteps(grpo, 10, seed=0, step=s)) for s in range(5)}
    assert len(chosen) > 1 and all(len(c) == 5 for c in chosen)
    grpo.timestep_selection = "first"
    assert train_timesteps(grpo, 10, seed=0, step=3) == [0, 1, 2, 3, 4]


def test_only_the_dit_learns_and_the_first_update_is_on_policy(tmp_path):
    pipeline = build_tiny_pipeline()
    mllm_before = {k: v.clone() for k, v in pipeline.mllm.model.state_dict().items()}
    dit_before = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    result = train(dit_config(tmp_path / "run", max_steps=1), pipeline=pipeline)
    metrics = result.history[0]
    assert metrics["clip_frac"] == 0.0 and metrics["approx_kl"] == 0.0  # ratio exactly 1
    assert metrics["kl"] == 0.0  # the reference is the policy before the update
    assert metrics["advantage_abs"] <= 5.0
    assert all(torch.equal(v, mllm_before[k]) for k, v in pipeline.mllm.model.state_dict().items())
    assert all(p.grad is None for p in pipeline.mllm.model.parameters())
    assert any(not torch.equal(v, dit_before[k]) for k, v in result.pipeline.transformer.state_dict().items())
    reloaded = ThinkGenPipeline.from_pretrained(tmp_path / "run" / "final")
    assert all(torch.equal(v, result.pipeline.transformer.state_dict()[k])
               for k, v in reloaded.transformer.state_dict().items())


@pytest.mark.parametrize(("reward", "sign"), [("rl_support.brightness", 1), ("rl_support.darkness", -1)])
def test_a_few_steps_move_brightness_the_rewarded_way(tmp_path, reward, sign):
    """Brightness rises when it is rewarded and falls when darkness is: the updates follow the reward."""
    result = train(dit_config(tmp_path / "run", max_steps=4, reward=reward), pipeline=build_tiny_pipeline())
    brightness = [r if sign > 0 else 1 - r for r in result.rewards]
    assert sign * (brightness[-1] - brightness[0]) > 0.02, brightness


def test_lora_trains_adapters_and_exports_them_merged(tmp_path):
    pipeline = build_tiny_pipeline()
    base = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    config = dit_config(tmp_path / "run", max_steps=2, beta=0.1, num_iterations=2)
    config.train.lora_rank = 4
    result = train(config, pipeline=pipeline)
    assert result.history[1]["kl"] > 0 and math.isfinite(result.history[1]["loss"])
    assert result.history[1]["clip_frac"] > 0  # the second pass over a batch meets the ε = 1e-4 clip
    saved = (tmp_path / "run" / "checkpoints" / "step_00000002" / "model.json").read_text()
    assert "lora_A" in saved and "to_q.base_layer.weight" not in saved
    merged = result.pipeline.transformer.state_dict()
    assert set(merged) == set(base) and any(not torch.equal(merged[k], v) for k, v in base.items())


def test_resume_is_exact(tmp_path):
    """Interrupted after step 1 and resumed, a run logs the same rewards and losses as one that never stopped
    (and scoring rewards in worker threads changes nothing)."""
    reference = train(dit_config(tmp_path / "a", max_steps=2, beta=0.1), pipeline=build_tiny_pipeline())
    train(dit_config(tmp_path / "b", max_steps=1, beta=0.1), pipeline=build_tiny_pipeline())
    # The resumed half scores its rewards in a thread pool: that must not change a thing either.
    pooled = dit_config(tmp_path / "b", max_steps=2, beta=0.1)
    pooled = dataclasses.replace(pooled, train=dataclasses.replace(pooled.train, reward_workers=2))
    resumed = train(pooled, pipeline=build_tiny_pipeline())
    assert len(resumed.rewards) == 1, "the second call must resume at step 1"
    assert resumed.rewards == reference.rewards[1:] and resumed.losses == reference.losses[1:]
    logged, expected = read_metrics(tmp_path / "b"), read_metrics(tmp_path / "a")
    for key in ("reward", "loss", "kl", "clip_frac", "grad_norm"):
        assert [r[key] for r in logged] == [r[key] for r in expected], key


def test_two_processes_split_the_prompts_and_stay_in_sync(tmp_path):
    """DiT-GRPO on 2 CPU processes (gloo): each rank rolls out its share of the step's prompts, the gradients
    are averaged, and the DiT weights are identical on both ranks after every update. Text prompts with glyph
    references give the guided and unguided branches different lengths: two DiT calls per step unless the
    trainer stacks them, and DDP allows one forward per backward."""
    from distributed_support import run_two_processes

    report = run_two_processes(tmp_path, "dit_grpo", f"""
import dataclasses
from rl_support import dit_config
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from thinkgen.rl.dit_grpo import train
from tiny_pipeline import build_tiny_pipeline

plain = build_tiny_pipeline()
pipeline = ThinkGenPipeline(plain.mllm, plain.transformer, plain.codec,
                            PipelineConfig(**{{**plain.config.__dict__, "glyph_preset": "nano"}}))
config = dit_config({str(tmp_path / "run")!r}, max_steps=2, scenario="text")
config = dataclasses.replace(config, grpo=dataclasses.replace(config.grpo, think=False))
result = train(config, pipeline=pipeline)
start = build_tiny_pipeline().transformer.parameters()
report = {{"in_sync": same_on_every_rank(pipeline.transformer.parameters()), "world_size": dist.get_world_size(),
          "steps": result.step,
          "changed": any(not torch.equal(p, q) for p, q in zip(pipeline.transformer.parameters(), start))}}
""")
    assert report["world_size"] == 2 and report["steps"] == 2
    assert report["in_sync"] and report["changed"]
    assert (tmp_path / "run" / "final" / "transformer").is_dir()
