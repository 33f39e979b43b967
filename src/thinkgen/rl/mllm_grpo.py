"""Stage 4 of ThinkGen, MLLM-GRPO: RL on the MLLM's thinking and instruction, the DiT frozen.

For each prompt the MLLM samples G rollouts (a thought and an instruction); the frozen DiT draws each one
from the instruction's hidden states, every rollout of a group **from the same initial noise** (ThinkGen
Sec. 3.3), so the rewards of a group differ only through the MLLM's text. The scenario's rule rewards
score the images, group-relative advantages (GRPO, DeepSeekMath Sec. 4.1.2) weight a clipped-ratio policy
loss on the generated tokens, optionally with a KL to the reference policy. Prompts mix the paper's five
scenarios (composition, reasoning generation, text rendering, editing, reflection), each with its rewards.

Commands:

    thinkgen train --recipe recipes/nano/stage4_mllm_grpo.toml                      # CPU, nano
    accelerate launch --num_processes 8 -m thinkgen.cli train --recipe recipes/full/stage4_mllm_grpo.toml

How it departs from the paper (whose RL hyper-parameters are unpublished) and from TRL:

* A lean loop rather than TRL's ``GRPOTrainer``: a rollout here is generate → capture the instruction's
  hidden states in the same ``generate`` call → render with a frozen DiT from per-group noise, and the
  policy is a VLM whose prompt carries images; TRL would need a second MLLM pass to get the states and
  has no place for the per-group noise, and this loop reuses ``thinkgen.train``'s checkpoints and logs.
* Log-probs are those of the sampling distribution at ``temperature`` (logits / T), without top-p / top-k
  truncation (1.0 / 0 by default, so none); old log-probs come from a teacher-forced forward right after
  the rollout, with the same micro-batches as the update, so the first update's ratio is exactly 1.
* The loss is DAPO's token-level mean by default (``grpo.loss_aggregation``), the KL the k3 estimator.
* The G rollouts of a prompt share one prefill: its KV cache is computed once and repeated per rollout
  (``encode_prompt(num_samples_per_prompt=G)``), which samples exactly what G separate prompts would.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from PIL import Image

from thinkgen.models.mllm import MLLMOutput, ThinkingConfig
from thinkgen.models.refine import first_true_index
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.rl.common import (
    BestPipeline,
    GRPOResult,
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
from thinkgen.rl.config import MLLMGRPOConfig
from thinkgen.rl.plots import save_curves
from thinkgen.train import run as R
from thinkgen.train.checkpoint import RNGState, ValueState
from thinkgen.train.distributed import OptimizerState, TrainableWeights, wrap_model
from thinkgen.train.logs import MetricsLogger
from thinkgen.train.optim import build_scheduler

logger = logging.getLogger(__name__)

NOISE_SLOT_OFFSET = 1 << 20  # item-seed slots of the initial noise, apart from the thinking seeds


@dataclass
class MLLMGroup:
    """The G rollouts of one prompt.

    Attributes:
        item: The prompt.
        output: The MLLM's generations (``G`` rows).
        images: The frozen DiT's images, one per rollout.
        initial_latents: ``(G, C, h, w)`` noise every image started from (equal rows).
        inputs: Teacher-forcing inputs of prompt + generation, per micro-batch.
        completion_masks: ``(b, n)`` True on the tokens the policy sampled (generated, not forced), per
            micro-batch.
        old_log_probs: ``(b, n)`` log-probs at rollout time, per micro-batch.
        ref_log_probs: ``(b, n)`` log-probs of the reference policy (``beta > 0``), per micro-batch.
        rewards: ``(G,)`` combined rewards.
        advantages: ``(G,)``.
    """

    item: PromptItem
    output: MLLMOutput
    images: list[Image.Image]
    initial_latents: torch.Tensor
    inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    completion_masks: list[torch.Tensor] = field(default_factory=list)
    old_log_probs: list[torch.Tensor] = field(default_factory=list)
    ref_log_probs: list[torch.Tensor] = field(default_factory=list)
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None


# ---- log-probs and loss -----------------------------------------------------------------------------


def completion_log_probs(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], completion_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``(B, n)`` log-probs of the generated tokens under ``model`` at ``temperature`` (teacher forcing).

    Only the last ``n + 1`` positions' logits are computed: the generated ids sit at the end of the
    inputs (:meth:`~thinkgen.models.mllm.ThinkGenMLLM.completion_inputs`).
    """
    n = completion_mask.shape[1]
    logits = model(**inputs, use_cache=False, logits_to_keep=n + 1).logits[:, :-1].float()  # (B, n, V)
    ids = inputs["input_ids"][:, -n:]  # (B, n)
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[..., None]).squeeze(-1)


def forced_token_mask(
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    think_end_token_id: int,
    max_thinking_tokens: int,
    max_instruction_tokens: int,
) -> torch.Tensor:
    """``(B, n)`` True on the tokens the thinking budget forced rather than the policy sampled.

    :class:`~thinkgen.models.mllm.ThinkingBudgetProcessor` forces ``</think>`` at position
    ``max_thinking_tokens`` of a thought still open, and the end of turn ``max_instruction_tokens`` tokens
    after ``</think>``. Their probability under the sampler was 1, so they carry no policy gradient and are
    left out of the loss.
    """
    n = completion_ids.shape[1]
    positions = torch.arange(n, device=completion_ids.device)[None]  # (1, n)
    is_close = (completion_ids == think_end_token_id) & completion_mask
    first_close = first_true_index(is_close)[:, None]  # (B, 1); n where the thought never closed
    closed = first_close < n
    forced_close = (positions == first_close) & (first_close == max_thinking_tokens)
    forced_end = positions == first_close + 1 + max_instruction_tokens
    return closed & (forced_close | forced_end) & completion_mask


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped GRPO objective (PPO's clip, DAPO's asymmetric range) plus ``beta`` · k3-KL.

    ``−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A) + β·(e^{ref − logp} − (ref − logp) − 1)`` per token,
    with ``r = e^{logp − logp_old}`` (DeepSeekMath Eq. 3–4).

    Args:
        log_probs, old_log_probs: ``(B, n)`` current and rollout-time log-probs.
        advantages: ``(B,)``, one per rollout.
        completion_mask: ``(B, n)`` bool.
        epsilon_low, epsilon_high: The clip range.
        beta: KL weight; needs ``ref_log_probs`` ``(B, n)`` when > 0.

    Returns:
        ``(B, n)`` per-token losses (zero off the mask), and token-level statistics (sums over the mask):
        ``clipped`` tokens whose clipped branch is active, ``kl`` summed KL, ``ratio`` summed ratios.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    adv = advantages[:, None]
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    mask = completion_mask.float()
    kl = torch.zeros_like(per_token)
    if beta > 0:
        if ref_log_probs is None:
            raise ValueError("beta > 0 needs ref_log_probs")
        delta = ref_log_probs - log_probs
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    is_clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    stats = {
        "clipped": (is_clipped.float() * mask).sum().detach(),
        "kl": (kl * mask).sum().detach(),
        "ratio": (ratio * mask).sum().detach(),
    }
    return per_token * mask, stats


def aggregate(per_token: torch.Tensor, completion_mask: torch.Tensor, mode: str, total: float) -> torch.Tensor:
    """This micro-batch's share of the step's loss.

    ``token``: its token losses summed over ``total`` = tokens of the whole step (DAPO). ``sequence``: each
    rollout's mean token loss summed over ``total`` = rollouts of the step (GRPO).
    """
    if mode == "token":
        return per_token.sum() / total
    lengths = completion_mask.sum(dim=1).clamp(min=1)
    return (per_token.sum(dim=1) / lengths).sum() / total


# ---- rollouts -----------------------------------------------------------------------------------------


@torch.no_grad()
def rollout(
    pipeline: ThinkGenPipeline,
    items: list[PromptItem],
    config: MLLMGRPOConfig,
    seed: int,
    noise_seeds: list[int],
    times: dict[str, float] | None = None,
) -> list[MLLMGroup]:
    """G thinking rollouts of each prompt, every group drawn by the frozen DiT from its own shared noise.

    All prompts' rollouts are generated as one batch (one ``generate``, one DiT sampling loop).

    Args:
        pipeline: The pipeline (its MLLM is the policy, its DiT frozen).
        items: The prompts of this process.
        config: The recipe.
        seed: Seeds the sampling of the thoughts.
        noise_seeds: Per prompt, the seed of its group's initial noise.
        times: Filled with the seconds of each phase: ``think_s`` and ``draw_s``.
    """
    times = {} if times is None else times
    start = time.perf_counter()
    grpo, sample = config.grpo, config.sample
    num = grpo.num_generations
    prompts = [item.prompt for item in items for _ in range(num)]
    thinking = ThinkingConfig(
        temperature=grpo.temperature, top_p=grpo.top_p, top_k=grpo.top_k, seed=seed,
        max_thinking_tokens=grpo.max_thinking_tokens, max_instruction_tokens=grpo.max_instruction_tokens,
        # An unclosed thought is a bad rollout to learn from, not an error: the DiT reads all of it and the
        # reward (the format reward in particular) tells.
        on_missing_think_end="all",
    )
    # 1. Think: G samples of the policy per prompt, continuing one shared prefill of the prompt.
    output = pipeline.mllm.encode_prompt(
        [item.prompt for item in items], [item.images for item in items], think=True, thinking=thinking,
        num_samples_per_prompt=num,
    )
    states, mask = nonempty_states(output.instruction_states, output.instruction_mask)
    times["think_s"] = time.perf_counter() - start
    start = time.perf_counter()

    # 2. Draw: one initial noise per group (ThinkGen Sec. 3.3) and the same sampler settings for all.
    side = sample.image_size // pipeline.codec.downscale_factor
    shape = (1, pipeline.codec.latent_channels, side, side)
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in noise_seeds]
    initial_latents = torch.cat([n.expand(num, -1, -1, -1) for n in noise])  # (P·G, C, h, w)
    # The DiT reads each row's glyph reference of its own instruction (where the model uses them), laid out
    # alike within a group.
    image_rows = [
        pipeline.dit_references(items[row // num].images, text, sample.image_size, sample.image_size,
                                noise_seeds[row // num])
        for row, text in enumerate(output.instruction)
    ]
    images = pipeline(
        prompts, images=image_rows if any(image_rows) else None, prompt_embeds=states, prompt_attention_mask=mask,
        glyphs=False,
        latents=initial_latents, height=sample.image_size, width=sample.image_size,
        num_inference_steps=sample.num_inference_steps, guidance_scale=sample.guidance_scale,
        image_guidance_scale=sample.image_guidance_scale, negative_prompt=sample.negative_prompt,
    ).images
    times["draw_s"] = time.perf_counter() - start

    groups = []
    for p, item in enumerate(items):
        rows = slice(p * num, (p + 1) * num)
        group_output = MLLMOutput(
            instruction_states=output.instruction_states[rows], instruction_mask=output.instruction_mask[rows],
            instruction_ids=output.instruction_ids[rows], is_thought_closed=output.is_thought_closed[rows],
            text=output.text[rows], reasoning=output.reasoning[rows], instruction=output.instruction[rows],
            generated_ids=output.generated_ids[rows],
        )
        groups.append(MLLMGroup(item, group_output, images[rows], initial_latents[rows]))
    return groups


@torch.no_grad()
def score_old_policy(
    pipeline: ThinkGenPipeline, model: torch.nn.Module, groups: list[MLLMGroup], config: MLLMGRPOConfig,
    reference: Any,
) -> None:
    """Fill each group's update inputs and its old (and reference) log-probs, micro-batch by micro-batch as
    the update will see them.

    Args:
        pipeline: The pipeline (its MLLM builds the teacher-forcing inputs).
        model: The trainable MLLM as wrapped for training (scores the old log-probs).
        groups: The rollouts.
        config: The recipe.
        reference: ``None`` (no KL), a frozen copy of the MLLM, or a context-manager factory under which
            ``model`` is the reference policy (LoRA disabled).
    """
    grpo = config.grpo
    for group in groups:
        item, group_output = group.item, group.output
        for start in range(0, grpo.num_generations, grpo.micro_batch_size):
            micro = slice(start, start + grpo.micro_batch_size)
            inputs, completion_mask = pipeline.mllm.completion_inputs(
                [item.prompt] * grpo.micro_batch_size, [item.images] * grpo.micro_batch_size,
                group_output.generated_ids[micro],
            )
            completion_mask = completion_mask & ~forced_token_mask(
                inputs["input_ids"][:, -completion_mask.shape[1]:], completion_mask, pipeline.mllm.think_end_token_id,
                grpo.max_thinking_tokens, grpo.max_instruction_tokens,
            )
            group.inputs.append(inputs)
            group.completion_masks.append(completion_mask)
            group.old_log_probs.append(completion_log_probs(model, inputs, completion_mask, grpo.temperature))
            if isinstance(reference, torch.nn.Module):
                group.ref_log_probs.append(completion_log_probs(reference, inputs, completion_mask, grpo.temperature))
            elif reference is not None:
                with reference():
                    group.ref_log_probs.append(completion_log_probs(model, inputs, completion_mask, grpo.temperature))


# ---- the loop -----------------------------------------------------------------------------------------


def train(config: MLLMGRPOConfig, pipeline: ThinkGenPipeline | None = None) -> GRPOResult:
    """Run (or resume) MLLM-GRPO. See the module docstring for the commands.

    Args:
        config: The validated recipe.
        pipeline: Start from this pipeline instead of ``config.model`` (its MLLM is trained in place).

    Returns:
        :class:`~thinkgen.rl.common.GRPOResult` (groups: :class:`MLLMGroup`); the trained pipeline is also
        written to ``{output_dir}/final`` (and with ``eval.keep_best`` the best-evaluated one to ``best``).

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/stage4_mllm_grpo.toml", ["run.max_steps=20"]))
    """
    # ---- compute init
    output_dir = Path(config.run.output_dir)
    pipeline = pipeline or load_pipeline(config.model, config.run.seed)
    qwen = pipeline.mllm.model
    accelerator = rl_accelerator(config.train.mixed_precision, list(type(qwen)._no_split_modules))
    R.log_on_main_only(accelerator)
    set_seed(config.run.seed)
    R.write_config(output_dir, config, accelerator.is_main_process)
    grpo = config.grpo

    # ---- models: the DiT (and codec) frozen, the MLLM (or its LoRA adapters) trainable
    pipeline.transformer.requires_grad_(False).eval().to(accelerator.device)
    qwen.to(accelerator.device)
    reference: Any = None
    if config.train.lora_rank:
        trainable = add_lora(qwen, config.train.lora_rank, config.train.lora_alpha, config.train.lora_target_modules)
        if grpo.beta > 0:
            reference = trainable.disable_adapter  # the base weights are the reference policy
    else:
        if grpo.beta > 0:  # a frozen copy, under the same autocast as the policy
            frozen = copy.deepcopy(qwen).requires_grad_(False).eval()
            reference = accelerator.prepare_model(frozen, evaluation_mode=True)
        trainable = qwen.requires_grad_(True)
    trainable.train()
    num_trainable = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    logger.info("MLLM-GRPO: %.3fM trainable MLLM parameters; DiT frozen", num_trainable / 1e6)
    model, optimizer = wrap_model(accelerator, trainable, config.train.gradient_checkpointing, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps * grpo.num_iterations)

    # ---- prompts and rewards
    source = PromptSource(config.prompts)
    rewards = ScenarioRewards(config.rewards, num_workers=config.train.reward_workers,
                              reward_models=config.reward_models)
    slots = process_slots(config.prompts.prompts_per_step, accelerator)

    # ---- checkpoints: every rollout's randomness is a function of (seed, step, slot), so the model,
    # optimizer, schedule and step are all a resume needs
    train_state = ValueState(step=0)
    shared = {"model": TrainableWeights(model), "optimizer": OptimizerState(model, optimizer),
              "scheduler": scheduler, "train_state": train_state}
    per_process = {"rng": RNGState()}
    manager = R.checkpoint_manager(accelerator, config.run)
    step = R.resume(config.run, manager, shared, per_process)
    metrics = MetricsLogger(output_dir, accelerator.is_main_process, config.run.use_tensorboard, step)
    bar = R.progress_bar(step, config.run.max_steps, accelerator.is_main_process)
    best = BestPipeline(output_dir, "mllm", accelerator) if config.eval.keep_best else None
    eval_thinking = greedy_thinking(grpo.max_thinking_tokens, grpo.max_instruction_tokens)

    def held_out(at: int) -> dict[str, float]:
        return evaluate_step(pipeline, model, at, config.prompts, config.eval, config.sample, rewards,
                             eval_thinking, config.run.seed, best)

    if config.eval.every and step == 0:
        metrics.log(0, held_out(0))

    # ---- the loop
    result = GRPOResult(step=step)
    while step < config.run.max_steps:
        # 1. Rollouts: G generations per prompt, rendered by the frozen DiT from one noise per group.
        start = time.perf_counter()
        items = [source.get(step * config.prompts.prompts_per_step + slot) for slot in slots]
        rollout_times: dict[str, float] = {}
        groups = rollout(
            pipeline, items, config, seed=R.item_seed(config.run.seed, step, accelerator.process_index),
            noise_seeds=[R.item_seed(config.run.seed, step, NOISE_SLOT_OFFSET + slot) for slot in slots],
            times=rollout_times,
        )

        # 2. Rewards (each scenario's own) are scored while the old policy scores its tokens; then
        # group-relative advantages.
        num = grpo.num_generations
        scenarios = [g.item.scenario for g in groups for _ in range(num)]
        submitted = time.perf_counter()
        pending = rewards.submit(
            scenarios, [g.item.prompt for g in groups for _ in range(num)], [im for g in groups for im in g.images],
            reasoning=[r for g in groups for r in g.output.reasoning],
            instructions=[s for g in groups for s in g.output.instruction],
            completions=[t for g in groups for t in g.output.text],
            **reward_columns(items, num, source),
        )
        scoring = time.perf_counter()
        score_old_policy(pipeline, model, groups, config, reference)
        rollout_times["score_s"] = time.perf_counter() - scoring
        waiting = time.perf_counter()
        totals, named = pending.result()
        # The reward's cost on the critical path: submitting (all of it without workers) plus the wait.
        reward_s = (scoring - submitted) + (time.perf_counter() - waiting)
        rollout_s = time.perf_counter() - start - reward_s
        reward_table = torch.tensor(totals).view(len(groups), num)  # (P, G)
        advantages = group_advantages(reward_table, grpo.scale_rewards, grpo.std_eps)
        for group, row_rewards, row_adv in zip(groups, reward_table, advantages):
            group.rewards, group.advantages = row_rewards, row_adv

        # 3. Policy updates on this batch of rollouts.
        start = time.perf_counter()
        num_tokens = sum(float(m.sum()) for g in groups for m in g.completion_masks)
        total = max(num_tokens, 1.0) if grpo.loss_aggregation == "token" else float(len(groups) * num)
        loss_sum = clipped = kl_sum = ratio_sum = 0.0
        grad_norm = 0.0
        for _ in range(grpo.num_iterations):
            for group in groups:
                size = grpo.micro_batch_size
                for k, (inputs, completion_mask) in enumerate(zip(group.inputs, group.completion_masks)):
                    log_probs = completion_log_probs(model, inputs, completion_mask, grpo.temperature)
                    per_token, stats = policy_loss(
                        log_probs, group.old_log_probs[k], group.advantages[k * size:(k + 1) * size].to(log_probs),
                        completion_mask, grpo.epsilon_low, grpo.epsilon_high, grpo.beta,
                        group.ref_log_probs[k] if group.ref_log_probs else None,
                    )
                    loss = aggregate(per_token, completion_mask, grpo.loss_aggregation, total)
                    accelerator.backward(loss)
                    loss_sum += loss.item()
                    clipped += float(stats["clipped"])
                    kl_sum += float(stats["kl"])
                    ratio_sum += float(stats["ratio"])
            grad_norm = R.optimizer_step(accelerator, model, optimizer, scheduler, config.optim.max_grad_norm)
        train_s = time.perf_counter() - start
        step += 1
        train_state.load_state_dict({"step": step})

        # 4. Metrics over all processes: reward curves per scenario, KL, clip fraction, timings.
        loss_sum, clipped, kl_sum, ratio_sum, num_tokens, reward_std, closed, rows = R.reduce_sum(accelerator, [
            loss_sum, clipped, kl_sum, ratio_sum, num_tokens,
            float(reward_table.std(dim=1, unbiased=False).sum()),
            float(sum(g.output.is_thought_closed.float().sum() for g in groups)), float(len(groups) * num),
        ])
        counted = max(num_tokens, 1.0) * grpo.num_iterations
        mean_loss = loss_sum / (accelerator.num_processes * grpo.num_iterations)
        step_metrics = {
            **reward_metrics(scenarios, totals, named),
            "loss": mean_loss, "kl": kl_sum / counted, "clip_frac": clipped / counted, "ratio": ratio_sum / counted,
            "reward_std": reward_std / (rows / num), "completion_tokens": num_tokens / rows,
            "thought_closed": closed / rows,
            "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            "rollout_s": rollout_s, "reward_s": reward_s, "train_s": train_s, **rollout_times,
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

    # ---- cleanup: the whole pipeline, trained MLLM (LoRA merged) inside
    bar.close()
    metrics.close()
    rewards.close()
    result.step = step
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipeline.mllm.model = merged_module(accelerator, model).eval()
        pipeline.save_pretrained(output_dir / "final")
        save_curves(output_dir)
        logger.info("wrote %s", output_dir / "final")
        result.pipeline = pipeline
    return result
