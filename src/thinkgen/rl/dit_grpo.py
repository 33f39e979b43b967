"""Stage 5 of ThinkGen, DiT-GRPO: Flow-GRPO on the DiT, the MLLM frozen.

The MLLM's conditioning of each prompt is computed once (no-think, or greedy thinking) and shared by the
prompt's G rollouts. Each rollout integrates the flow ODE turned into an SDE with the same marginals
(Flow-GRPO, Liu et al. 2025, Eq. 7–9; :func:`~thinkgen.sampling.sde_step_with_logprob`), with fewer steps
than evaluation uses, recording the latents and the Gaussian log-prob of every step. The scenario's
rewards score the decoded images; advantages are group-relative and clipped to ±``adv_clip_max``; a
subset of the steps is re-scored under the current DiT and trained with Flow-GRPO's clipped ratio
(ε ≈ 1e-4) plus ``β·‖μ_θ − μ_ref‖² / (2σ_t²)`` against the reference DiT (the LoRA-disabled model, or a
frozen copy).

Commands:

    thinkgen train --recipe recipes/nano/stage5_dit_grpo.toml                       # CPU, nano
    accelerate launch --num_processes 8 -m thinkgen.cli train --recipe recipes/full/stage5_dit_grpo.toml

Choices (the paper gives 20 steps at 512 px and nothing else):

* CFG during rollouts: the policy's step mean is computed from the *guided* velocity
  ``u + s·(c − u)``, both branches through the trained DiT, in the rollout and in every re-scoring, so
  the log-prob is that of the sampler actually used and the first update's ratio is exactly 1 (Flow-GRPO
  does the same). The reference mean is the reference DiT's guided velocity.
* The trained steps are one subset per RL step shared by all rollouts (``random`` or ``first``), and the
  update re-scores them in the rollout's micro-batches, so old and new log-probs come from identical
  computations.
* One optimizer step per pass over the batch (``grpo.num_iterations`` passes), gradients accumulated over
  prompts, micro-batches and trained steps.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from PIL import Image

from thinkgen.imageio import tensor_to_pil
from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.rl.common import (
    BestPipeline,
    GRPOResult,
    PendingRewards,
    PromptItem,
    PromptSource,
    ScenarioRewards,
    add_lora,
    evaluate_step,
    greedy_thinking,
    group_advantages,
    load_pipeline,
    merged_module,
    nonempty_states,
    process_slots,
    reward_columns,
    reward_metrics,
    rl_accelerator,
)
from thinkgen.rl.config import DiTGRPOConfig, DiTGRPOParams, RolloutSampleConfig
from thinkgen.rl.plots import save_curves
from thinkgen.sampling import (
    GuidanceBatching,
    GuidanceConditions,
    SDEStepOutput,
    build_guidance_conditions,
    flow_timesteps,
    guided_velocity,
    sde_step_with_logprob,
)
from thinkgen.train import run as R
from thinkgen.train.checkpoint import RNGState, ValueState
from thinkgen.train.distributed import OptimizerState, TrainableWeights, wrap_model
from thinkgen.train.logs import MetricsLogger
from thinkgen.train.optim import build_scheduler
from thinkgen.train.sft import EMA

logger = logging.getLogger(__name__)

NOISE_SLOT_OFFSET = 1 << 20  # item-seed slots of a group's noise, apart from other per-step draws
TIMESTEP_SLOT = (1 << 21) - 1  # item-seed slot of the step's choice of trained timesteps


@dataclass
class DiTGroup:
    """The G rollouts of one prompt, in micro-batches of ``grpo.micro_batch_size``.

    Attributes:
        item: The prompt.
        instruction: What the frozen MLLM wrote (the prompt itself in no-think mode).
        conditions: Guidance branches of one micro-batch (every micro-batch of a group has the same).
        latents: Per micro-batch, ``(N + 1, b, C, h, w)``: the noise and the latents after every step.
        log_probs: Per micro-batch, ``(N, b)`` rollout log-probs of every step.
        images: The decoded images, one per rollout.
        rewards, advantages: ``(G,)``; advantages already clipped.
    """

    item: PromptItem
    instruction: str
    conditions: GuidanceConditions
    latents: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None


# ---- one SDE step, and the Flow-GRPO loss ------------------------------------------------------------


def step_log_prob(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    t: float,
    t_next: float,
    conditions: GuidanceConditions,
    sample: RolloutSampleConfig,
    noise_level: float,
    generator: torch.Generator | None = None,
    next_latents: torch.Tensor | None = None,
    guidance_batching: GuidanceBatching = "by_length",
) -> SDEStepOutput:
    """One guided SDE step: sample it (``generator``) or re-score ``next_latents`` under ``transformer``;
    ``guidance_batching`` as :func:`~thinkgen.sampling.guided_velocity` takes it."""
    velocity = guided_velocity(transformer, latents, t, conditions, sample.guidance_scale, sample.image_guidance_scale,
                               guidance_batching)
    return sde_step_with_logprob(latents, velocity, t, t_next, noise_level, generator, next_latents)


def flow_grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO's clipped policy loss of one step: ``mean(max(−A·r, −A·clip(r, 1 − ε, 1 + ε)))``.

    Args:
        log_prob, old_log_prob: ``(b,)`` current and rollout log-probs of the step.
        advantages: ``(b,)``, already clipped to ±``adv_clip_max``.
        clip_range: ε.

    Returns:
        The loss and ``clip_frac`` (share of ratios outside ``1 ± ε``) and ``approx_kl``
        (``½·mean((logp − logp_old)²)``, the drift from the rollout policy).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {
        "clip_frac": float(((ratio.detach() - 1).abs() > clip_range).float().mean()),
        "approx_kl": float(0.5 * ((log_prob.detach() - old_log_prob) ** 2).mean()),
    }
    return loss, stats


def mean_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Flow-GRPO's KL between the policy's and the reference's Gaussian steps of equal std:
    ``‖μ_θ − μ_ref‖² / (2σ²)`` with the squared norm averaged over elements; ``(b,)``."""
    return ((mean - ref_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * std.flatten() ** 2)


def train_timesteps(grpo: DiTGRPOParams, num_steps: int, seed: int, step: int) -> list[int]:
    """The denoising steps trained at RL step ``step``: ``round(fraction · N)`` of them (at least one), the
    first ones or a random subset drawn from the step's own generator."""
    count = max(1, round(grpo.timestep_fraction * num_steps))
    if grpo.timestep_selection == "first":
        return list(range(count))
    order = torch.randperm(num_steps, generator=R.item_generator(seed, step, TIMESTEP_SLOT))
    return sorted(order[:count].tolist())


# ---- rollouts -----------------------------------------------------------------------------------------


@torch.no_grad()
def rollout_group(
    pipeline: ThinkGenPipeline,
    model: torch.nn.Module,
    item: PromptItem,
    config: DiTGRPOConfig,
    timesteps: list[float],
    noise_seed: int,
    guidance_batching: GuidanceBatching = "by_length",
) -> DiTGroup:
    """G SDE rollouts of one prompt under the current DiT, the MLLM's conditioning computed once."""
    grpo, sample = config.grpo, config.sample
    size = grpo.micro_batch_size
    # 1. Conditioning (frozen MLLM), once for the prompt; every micro-batch uses the same branches.
    thinking = greedy_thinking(grpo.max_thinking_tokens, grpo.max_instruction_tokens)
    encoded = pipeline.mllm.encode_prompt([item.prompt], [item.images], think=grpo.think, thinking=thinking)
    dtype = next(pipeline.transformer.parameters()).dtype
    states, mask = nonempty_states(encoded.instruction_states, encoded.instruction_mask)
    states = states.to(pipeline.device, dtype).expand(size, -1, -1)
    mask = mask.to(pipeline.device).expand(size, -1)
    negative = negative_mask = None
    if sample.guidance_scale > 1:
        negative, negative_mask = pipeline.encode_negative(sample.negative_prompt, size)
        negative = negative.to(dtype)
    instruction = encoded.instruction[0] if grpo.think else item.prompt
    references = pipeline.dit_references(item.images, instruction, sample.image_size, sample.image_size, noise_seed)
    refs = pipeline.encode_references([references] * size) if references else None
    conditions = build_guidance_conditions(states, mask, negative, negative_mask, refs)
    group = DiTGroup(item, instruction, conditions)

    # 2. SDE rollouts, micro-batch by micro-batch, recording every step.
    # Initial noise from a CPU generator (the same on any device), the SDE's noise from one on the device.
    side = sample.image_size // pipeline.codec.downscale_factor
    generator = torch.Generator().manual_seed(noise_seed)
    sde_generator = torch.Generator(pipeline.device).manual_seed(noise_seed + 1)
    for _ in range(grpo.num_generations // size):
        latents = torch.randn(size, pipeline.codec.latent_channels, side, side, generator=generator)
        latents = latents.to(pipeline.device)
        trajectory, log_probs = [latents], []
        for i in range(len(timesteps) - 1):
            out = step_log_prob(model, latents, timesteps[i], timesteps[i + 1], conditions, sample,
                                grpo.noise_level, generator=sde_generator, guidance_batching=guidance_batching)
            latents = out.latents
            trajectory.append(latents)
            log_probs.append(out.log_prob)
        group.latents.append(torch.stack(trajectory))  # (N + 1, b, C, h, w)
        group.log_probs.append(torch.stack(log_probs))  # (N, b)
        group.images.extend(tensor_to_pil(pipeline.codec.decode(latents).cpu()))
    return group


# ---- the loop -----------------------------------------------------------------------------------------


def train(config: DiTGRPOConfig, pipeline: ThinkGenPipeline | None = None) -> GRPOResult:
    """Run (or resume) DiT-GRPO. See the module docstring for the commands.

    Args:
        config: The validated recipe.
        pipeline: Start from this pipeline instead of ``config.model`` (its DiT is trained in place).

    Returns:
        :class:`~thinkgen.rl.common.GRPOResult` (groups: :class:`DiTGroup`); the trained pipeline is also
        written to ``{output_dir}/final`` (and with ``eval.keep_best`` the best-evaluated one to ``best``).

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/stage5_dit_grpo.toml", ["run.max_steps=20"]))
    """
    # ---- compute init
    output_dir = Path(config.run.output_dir)
    pipeline = pipeline or load_pipeline(config.model, config.run.seed)
    accelerator = rl_accelerator(config.train.mixed_precision, ThinkGenTransformer2DModel._no_split_modules)
    R.log_on_main_only(accelerator)
    set_seed(config.run.seed)
    R.write_config(output_dir, config, accelerator.is_main_process)
    grpo, sample = config.grpo, config.sample

    # ---- models: the MLLM (and codec) frozen, the DiT (or its LoRA adapters) trainable
    pipeline.mllm.model.requires_grad_(False).eval().to(accelerator.device)
    codec = pipeline.codec
    codec_module = codec if isinstance(codec, torch.nn.Module) else getattr(codec, "vae", None)
    if codec_module is not None:
        codec_module.requires_grad_(False).eval().to(accelerator.device)
    dit = pipeline.transformer.to(accelerator.device)
    reference: Callable[[], Any] | torch.nn.Module | None = None
    if config.train.lora_rank:
        trainable = add_lora(dit, config.train.lora_rank, config.train.lora_alpha, config.train.lora_target_modules)
        if grpo.beta > 0:
            reference = trainable.disable_adapter  # the base weights are the reference
    else:
        if grpo.beta > 0:  # a frozen copy, under the same autocast as the policy
            frozen = copy.deepcopy(dit).requires_grad_(False).eval()
            reference = accelerator.prepare_model(frozen, evaluation_mode=True)
        trainable = dit.requires_grad_(True)
    trainable.train()
    num_trainable = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    logger.info("DiT-GRPO: %.3fM trainable DiT parameters; MLLM frozen", num_trainable / 1e6)
    model, optimizer = wrap_model(accelerator, trainable, config.train.gradient_checkpointing, config.optim)
    ema = EMA(trainable, config.train.ema_decay) if config.train.ema_decay else None  # on the model's device
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps * grpo.num_iterations)

    # ---- prompts and rewards
    source = PromptSource(config.prompts)
    rewards = ScenarioRewards(config.rewards, num_workers=config.train.reward_workers,
                              reward_models=config.reward_models)
    slots = process_slots(config.prompts.prompts_per_step, accelerator)
    side = sample.image_size // pipeline.codec.downscale_factor
    timesteps = flow_timesteps(
        sample.num_inference_steps, side, side, shift_reference_side=pipeline.config.time_shift_reference_side
    ).tolist()

    # ---- checkpoints (every rollout's randomness is a function of (seed, step, slot))
    train_state = ValueState(step=0)
    shared = {"model": TrainableWeights(model), "optimizer": OptimizerState(model, optimizer),
              "scheduler": scheduler, "train_state": train_state}
    if ema is not None:
        shared["ema"] = ema
    per_process = {"rng": RNGState()}
    manager = R.checkpoint_manager(accelerator, config.run)
    step = R.resume(config.run, manager, shared, per_process)
    metrics = MetricsLogger(output_dir, accelerator.is_main_process, config.run.use_tensorboard, step)
    bar = R.progress_bar(step, config.run.max_steps, accelerator.is_main_process)
    best = BestPipeline(output_dir, "transformer", accelerator) if config.eval.keep_best else None
    eval_thinking = greedy_thinking(grpo.max_thinking_tokens, grpo.max_instruction_tokens) if grpo.think else None

    def held_out(at: int) -> dict[str, float]:
        return evaluate_step(pipeline, model, at, config.prompts, config.eval, sample, rewards, eval_thinking,
                             config.run.seed, best)

    if config.eval.every and step == 0:
        metrics.log(0, held_out(0))

    # ---- the loop
    result = GRPOResult(step=step)
    num = grpo.num_generations
    # Under DDP one backward may follow one forward only: the guidance branches go through one DiT call,
    # padded to one length, in rollouts and re-scoring alike (so the first ratio is still exactly 1).
    batching: GuidanceBatching = "all" if accelerator.num_processes > 1 else "by_length"
    while step < config.run.max_steps:
        # 1. Rollouts: G SDE trajectories per prompt with per-step log-probs; each group's rewards are
        # scored while the next group is sampled.
        start = time.perf_counter()
        groups, pending, reward_s = [], [], 0.0
        for slot in slots:
            group = rollout_group(pipeline, model, source.get(step * config.prompts.prompts_per_step + slot), config,
                                  timesteps, R.item_seed(config.run.seed, step, NOISE_SLOT_OFFSET + slot), batching)
            submitted = time.perf_counter()
            pending.append(rewards.submit(
                [group.item.scenario] * num, [group.item.prompt] * num, group.images,
                instructions=[group.instruction] * num, **reward_columns([group.item], num, source),
            ))
            reward_s += time.perf_counter() - submitted
            groups.append(group)

        # 2. Rewards and group-relative advantages, clipped (Flow-GRPO).
        waiting = time.perf_counter()
        scenarios = [g.item.scenario for g in groups for _ in range(num)]
        totals, named = PendingRewards.chain(pending).result()
        # The reward's cost on the critical path: submitting (all of it without workers) plus the wait.
        reward_s += time.perf_counter() - waiting
        rollout_s = time.perf_counter() - start - reward_s
        reward_table = torch.tensor(totals).view(len(groups), num)  # (P, G)
        advantages = group_advantages(reward_table, grpo.scale_rewards, grpo.std_eps)
        advantages = advantages.clamp(-grpo.adv_clip_max, grpo.adv_clip_max)
        for group, row_rewards, row_adv in zip(groups, reward_table, advantages):
            group.rewards, group.advantages = row_rewards, row_adv.to(accelerator.device)

        # 3. Updates on a subset of the denoising steps, re-scored in the rollout's micro-batches.
        start = time.perf_counter()
        trained = train_timesteps(grpo, sample.num_inference_steps, config.run.seed, step)
        num_terms = len(groups) * (num // grpo.micro_batch_size) * len(trained)
        sums = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
        grad_norm = 0.0
        for _ in range(grpo.num_iterations):
            for group in groups:
                for k, (trajectory, old_log_probs) in enumerate(zip(group.latents, group.log_probs)):
                    adv = group.advantages[k * grpo.micro_batch_size:(k + 1) * grpo.micro_batch_size]
                    for j in trained:
                        out = step_log_prob(model, trajectory[j], timesteps[j], timesteps[j + 1], group.conditions,
                                            sample, grpo.noise_level, next_latents=trajectory[j + 1],
                                            guidance_batching=batching)
                        policy, stats = flow_grpo_loss(out.log_prob, old_log_probs[j], adv, grpo.clip_range)
                        kl = torch.zeros((), device=policy.device)
                        if reference is not None:
                            with torch.no_grad(), _as_reference(reference):
                                ref = step_log_prob(reference if isinstance(reference, torch.nn.Module) else model,
                                                    trajectory[j], timesteps[j], timesteps[j + 1], group.conditions,
                                                    sample, grpo.noise_level, next_latents=trajectory[j + 1],
                                                    guidance_batching=batching)
                            kl = mean_kl(out.mean, ref.mean, out.std).mean()
                        loss = policy + grpo.beta * kl
                        accelerator.backward(loss / num_terms)
                        for name, value in (("loss", loss.item()), ("policy_loss", policy.item()), ("kl", kl.item()),
                                            *stats.items()):
                            sums[name] += value
            grad_norm = R.optimizer_step(accelerator, model, optimizer, scheduler, config.optim.max_grad_norm)
            if ema is not None:
                ema.update()
        train_s = time.perf_counter() - start
        step += 1
        train_state.load_state_dict({"step": step})

        # 4. Metrics over all processes.
        names = list(sums)
        *reduced, reward_std, advantage_abs, rows = R.reduce_sum(accelerator, [
            *sums.values(), float(reward_table.std(dim=1, unbiased=False).sum()), float(advantages.abs().sum()),
            float(len(groups) * num),
        ])
        counted = num_terms * grpo.num_iterations * accelerator.num_processes
        step_metrics = {
            **reward_metrics(scenarios, totals, named),
            **{name: value / counted for name, value in zip(names, reduced)},
            "reward_std": reward_std / (rows / num), "advantage_abs": advantage_abs / rows,
            "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            "rollout_s": rollout_s, "reward_s": reward_s, "train_s": train_s,
        }
        result.record(step_metrics, groups)
        bar.update(1)
        bar.set_postfix(reward=f"{step_metrics['reward']:.3f}")
        if config.eval.every and step % config.eval.every == 0:
            step_metrics.update(held_out(step))
        if step % config.run.log_every == 0 or step == config.run.max_steps:
            metrics.log(step, step_metrics)
        if config.run.save_every and step % config.run.save_every == 0 or step == config.run.max_steps:
            manager.save(step, shared, per_process)

    # ---- cleanup: the whole pipeline, trained DiT (EMA weights if on, LoRA merged) inside
    bar.close()
    metrics.close()
    rewards.close()
    result.step = step
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to_model()
        pipeline.transformer = merged_module(accelerator, model).eval()
        pipeline.save_pretrained(output_dir / "final")
        save_curves(output_dir)
        logger.info("wrote %s", output_dir / "final")
        result.pipeline = pipeline
    return result


def _as_reference(reference: Callable[[], Any] | torch.nn.Module) -> contextlib.AbstractContextManager:
    """The context in which the reference is evaluated: LoRA disabled, or nothing for a frozen copy."""
    return contextlib.nullcontext() if isinstance(reference, torch.nn.Module) else reference()
