"""MLLM-GRPO: shared noise per group, zero-mean advantages, a loss that only reaches the MLLM, a ratio of
exactly 1 at the first update, a real learning signal, LoRA with its reference, and exact resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rl_support import mllm_config
from thinkgen.rl.common import group_advantages
from thinkgen.rl.mllm_grpo import aggregate, forced_token_mask, policy_loss, train
from thinkgen.train.logs import read_metrics
from tiny_pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_advantages_are_zero_mean_per_group():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2], [3.0, 1.0, 2.0, 2.0]])
    scaled = group_advantages(rewards, scale_rewards=True, std_eps=1e-4)
    assert torch.allclose(scaled.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.equal(scaled[1], torch.zeros(4))  # no signal in a group of equal rewards
    assert torch.allclose(scaled[0], scaled[2], atol=1e-3)  # scale-free with the std
    centred = group_advantages(rewards, scale_rewards=False, std_eps=1e-4)
    assert torch.allclose(centred[2], torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_policy_loss_clips_and_aggregates():
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -1.0])
    new = torch.zeros(2, 3, requires_grad=True)
    per_token, stats = policy_loss(new, old, advantages, mask, 0.2, 0.28)
    assert torch.allclose(per_token, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]))
    assert float(stats["clipped"]) == 0 and float(stats["ratio"]) == 5.0
    assert aggregate(per_token, mask, "token", 5.0).item() == pytest.approx(1 / 5)
    assert aggregate(per_token, mask, "sequence", 2.0).item() == pytest.approx(0.0)
    # Past the clip range in the advantage's direction the gradient vanishes; against it, it does not.
    far = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]])).requires_grad_(True)
    per_token, stats = policy_loss(far, old, advantages, torch.ones(2, 3, dtype=torch.bool), 0.2, 0.28)
    per_token.sum().backward()
    assert far.grad[0, 0] == 0 and far.grad[0, 1] != 0 and far.grad[1, 1] == 0 and far.grad[1, 0] != 0
    assert float(stats["clipped"]) == 2
    # The k3 KL is zero where policy and reference agree and positive elsewhere.
    _, stats = policy_loss(old, old, advantages, mask, 0.2, 0.2, beta=0.1, ref_log_probs=torch.full((2, 3), -0.5))
    assert float(stats["kl"]) > 0
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss(old, old, advantages, mask, 0.2, 0.2, beta=0.1)


def test_forced_tokens_are_left_out():
    ids = torch.tensor([[5, 6, 15, 7, 8, 2], [15, 9, 2, 0, 0, 0], [5, 15, 7, 2, 0, 0]])  # 15 = </think>, 2 = end
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    forced = forced_token_mask(ids, mask, think_end_token_id=15, max_thinking_tokens=2, max_instruction_tokens=2)
    # Row 0: </think> forced at the budget (2) and the end forced 2 tokens later; rows 1-2 closed on their own.
    assert forced.tolist() == [[False, False, True, False, False, True], [False] * 6, [False] * 6]


def test_one_step_shares_noise_touches_only_the_mllm_and_starts_at_ratio_one(tmp_path):
    pipeline = build_tiny_pipeline()
    dit_before = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    mllm_before = {k: v.clone() for k, v in pipeline.mllm.model.state_dict().items()}
    first_inputs: list[torch.Tensor] = []
    hook = pipeline.transformer.register_forward_pre_hook(
        lambda module, args: first_inputs.append(args[0].clone()) if not first_inputs else None
    )
    result = train(mllm_config(tmp_path / "run", max_steps=1), pipeline=pipeline)
    hook.remove()

    # Every rollout of a group started from the same noise; the groups from different noises.
    groups = result.last_groups
    assert len(groups) == 2 and all(len(g.images) == 8 for g in groups)
    drawn = first_inputs[0][:16]  # the conditional branch of the first DiT call (CFG stacks [cond, uncond])
    for g, group in enumerate(groups):
        rows = drawn[g * 8:(g + 1) * 8]
        assert all(torch.equal(row, rows[0]) for row in rows)
        assert torch.equal(group.initial_latents[0], rows[0])
    assert not torch.equal(drawn[0], drawn[8])
    # The group's instructions differ (sampled), so its reward differences come from the MLLM's text.
    assert len(set(groups[0].output.instruction)) > 1

    metrics = result.history[0]
    assert metrics["ratio"] == 1.0 and metrics["clip_frac"] == 0.0  # first update: exactly on-policy
    assert all(torch.equal(v, dit_before[k]) for k, v in pipeline.transformer.state_dict().items())
    assert all(p.grad is None for p in pipeline.transformer.parameters())
    trained = result.pipeline.mllm.model.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in mllm_before.items())
    logged = read_metrics(tmp_path / "run")
    assert logged[0]["step"] == 1 and {"reward", "reward/composition", "kl", "clip_frac", "loss"} <= set(logged[0])
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()


def test_a_few_steps_learn_a_toy_reward(tmp_path):
    """Reward: the instruction contains one word the random model writes now and then. GRPO must raise it."""
    result = train(mllm_config(tmp_path / "run", max_steps=2), pipeline=build_tiny_pipeline())
    assert 0.0 < result.rewards[0] < 0.5
    assert result.rewards[1] >= result.rewards[0] + 0.3, result.rewards


def test_lora_with_kl_trains_adapters_only(tmp_path):
    pipeline = build_tiny_pipeline()
    base = {k: v.clone() for k, v in pipeline.mllm.model.state_dict().items()}
    config = mllm_config(tmp_path / "run", max_steps=2, beta=0.1)
    config.train.lora_rank = 4
    result = train(config, pipeline=pipeline)
    # The reference (adapters off) is the policy before any update: no KL in step 1, some in step 2.
    assert result.history[0]["kl"] < 1e-6 and result.history[1]["kl"] > 0
    saved = (tmp_path / "run" / "checkpoints" / "step_00000002" / "model.json").read_text()
    assert "lora_A" in saved and "q_proj.base_layer.weight" not in saved
    merged = result.pipeline.mllm.model.state_dict()
    assert set(merged) == set(base)  # exported with the adapters merged, in the base layout
    assert any(not torch.equal(merged[k], v) for k, v in base.items())


def test_resume_is_exact(tmp_path):
    """Interrupted after step 1 and resumed, a run logs the same rewards and losses as one that never stopped
    (and scoring rewards in worker threads changes nothing)."""
    reference = train(mllm_config(tmp_path / "a", max_steps=2), pipeline=build_tiny_pipeline())
    train(mllm_config(tmp_path / "b", max_steps=1), pipeline=build_tiny_pipeline())
    # The resumed half scores its rewards in a thread pool: that must not change a thing either.
    pooled = mllm_config(tmp_path / "b", max_steps=2)
    pooled = dataclasses.replace(pooled, train=dataclasses.replace(pooled.train, reward_workers=2))
    resumed = train(pooled, pipeline=build_tiny_pipeline())
    assert len(resumed.rewards) == 1, "the second call must resume at step 1"
    assert resumed.rewards == reference.rewards[1:] and resumed.losses == reference.losses[1:]
    logged, expected = read_metrics(tmp_path / "b"), read_metrics(tmp_path / "a")
    for key in ("reward", "loss", "kl", "clip_frac", "grad_norm"):
        assert [r[key] for r in logged] == [r[key] for r in expected], key


def test_two_processes_split_the_prompts_and_stay_in_sync(tmp_path):
    """MLLM-GRPO on 2 CPU processes (gloo): each rank rolls out its share of the step's prompts, the
    gradients are averaged, and the MLLM weights are identical on both ranks after every update."""
    from distributed_support import run_two_processes

    report = run_two_processes(tmp_path, "mllm_grpo", f"""
from rl_support import mllm_config
from thinkgen.rl.mllm_grpo import train
from tiny_pipeline import build_tiny_pipeline

pipeline = build_tiny_pipeline()
result = train(mllm_config({str(tmp_path / "run")!r}, max_steps=2), pipeline=pipeline)
start = build_tiny_pipeline().mllm.model.parameters()
report = {{"in_sync": same_on_every_rank(pipeline.mllm.model.parameters()), "world_size": dist.get_world_size(),
          "steps": result.step,
          "changed": any(not torch.equal(p, q) for p, q in zip(pipeline.mllm.model.parameters(), start))}}
""")
    assert report["world_size"] == 2 and report["steps"] == 2
    assert report["in_sync"] and report["changed"]
    assert (tmp_path / "run" / "final" / "mllm").is_dir()
