"""Configs of the SepGRPO stages: ``MLLMGRPOConfig`` (stage 4), ``DiTGRPOConfig`` (stage 5), ``SepGRPOConfig``.

A recipe fills them like the supervised ones (:func:`thinkgen.train.config.load_recipe`)::

    trainer = "mllm_grpo"            # or "dit_grpo", or "sepgrpo" (then one table per stage, see below)
    [run]       output dir, seed, RL steps, logging / saving cadence (shared with the supervised stages)
    [model]     the pipeline RL starts from
    [prompts]   where prompts come from, the scenario mix, prompts per step
    [rewards.<scenario>]  reward name (or dotted path) = weight, per scenario
    [reward_models.<name>]  a model-based reward (kind, model folder or judge endpoint), then usable by name
    [sample]    how rollouts are rendered (size, steps, guidance)
    [grpo]      the algorithm's knobs
    [optim]     AdamW and its LR schedule (shared with the supervised stages)
    [train]     precision, LoRA, gradient checkpointing (EMA for the DiT)
    [eval]      held-out reward at intervals

The paper publishes none of the RL hyper-parameters (ThinkGen Sec. 4.1 gives the scenarios, the reward
models and 20 DiT steps at 512 px); defaults below follow DeepSeekMath GRPO / DAPO for the MLLM and
Flow-GRPO (Liu et al. 2025) for the DiT, and each says where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thinkgen.rewards.models import build_reward_models
from thinkgen.rewards.registry import build_rewards
from thinkgen import DTYPES
from thinkgen.train.config import (
    MIXED_PRECISIONS,
    DistributedConfig,
    OptimConfig,
    RunConfig,
    _one_of,
    _require,
)
from thinkgen.world.scenarios import check_kinds, check_scenario
from thinkgen.world.scene import get_preset
from thinkgen.world.splits import check_split

PROMPT_KINDS = ("world", "jsonl")
LOSS_AGGREGATIONS = ("token", "sequence")
TIMESTEP_SELECTIONS = ("random", "first")
DEFAULT_REWARD_KEY = "default"
# The paper's five stage-4 scenarios in the world's names (reasoning editing rides with editing).
PAPER_SCENARIOS = {"composition": 1.0, "reasoning": 1.0, "text": 1.0, "edit": 1.0, "reflection": 1.0}


# ---- sections shared by both stages ---------------------------------------------------------------


@dataclass
class RLModelConfig:
    """``[model]``: the pipeline RL starts from.

    Attributes:
        pipeline: A ThinkGen pipeline folder (``ThinkGenPipeline.from_pretrained``: the supervised model,
            or the ``final/`` of an earlier RL stage), or ``tiny`` for a tiny random pipeline (smoke runs).
        dtype: dtype the pipeline is loaded in (``float32``, ``bfloat16``, ``float16``).
        tiny_dit: Constructor arguments of the tiny pipeline's DiT (``tiny`` only).
    """

    pipeline: str = "tiny"
    dtype: str = "float32"
    tiny_dit: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.pipeline), "pipeline must be a pipeline folder or 'tiny'")
        _one_of("dtype", self.dtype, DTYPES)
        _require(not self.tiny_dit or self.pipeline == "tiny", "tiny_dit is only for pipeline = 'tiny'")


@dataclass
class PromptConfig:
    """``[prompts]``: the RL prompts. Prompt ``i`` of step ``s`` is stream item ``s · prompts_per_step + i``,
    so a resumed run sees the same prompts.

    Attributes:
        kind: ``world`` (the synthetic world's scenarios, with specs for the rule rewards) or ``jsonl``
            (records with ``instruction``, optional ``scenario``, ``spec``, ``input_images`` (paths relative to
            the file) and any further columns, which reach the rewards as keyword arguments).
        scenarios: Scenario → weight of the mix (``world``); the paper's five stage-4 scenarios by default.
        kinds: Scenario → the sub-kinds its prompts are drawn from, evenly (``world``; e.g. ``{composition =
            ["color_attr", "position"]}`` to train on what the model gets wrong); a scenario not named here
            draws every kind, as the world does.
        preset: World difficulty preset (``world``).
        split: World split (``world``).
        seed: Stream seed (``world``: the world's seed; ``jsonl``: the shuffling seed).
        path: The JSONL file (``jsonl``).
        prompts_per_step: Distinct prompts per RL step over all processes; each gets ``grpo.num_generations``
            rollouts.
    """

    kind: str = "world"
    scenarios: dict[str, Any] = field(default_factory=lambda: dict(PAPER_SCENARIOS))
    kinds: dict[str, Any] = field(default_factory=dict)
    preset: str = "nano"
    split: str = "train"
    seed: int = 0
    path: str = ""
    prompts_per_step: int = 4

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, PROMPT_KINDS)
        _require(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.kind == "jsonl":
            _require(bool(self.path), "path must name the JSONL file of a jsonl prompt source")
            _require(not self.kinds, "kinds are for world prompts; a jsonl source's records are the prompts")
            return
        _require(not self.path, f"path is only for jsonl prompts, got {self.path!r}")
        _require(bool(self.scenarios), "scenarios must not be empty")
        for name, weight in self.scenarios.items():
            check_scenario(name)
            _require(
                isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                f"scenarios.{name} must be a number > 0, got {weight!r}",
            )
        check_kinds(self.kinds, list(self.scenarios))  # after the scenarios: kinds are looked up under them
        get_preset(self.preset)
        check_split(self.split)


@dataclass
class RolloutSampleConfig:
    """``[sample]``: how a rollout's image is rendered.

    Attributes:
        image_size: Side of the square images, pixels (the paper's stage 5 uses 512).
        num_inference_steps: Denoising steps of a rollout. Flow-GRPO samples rollouts with fewer steps
            (10) than it evaluates with (40); the paper's stage 5 uses 20.
        guidance_scale: Text CFG scale during rollouts (≤ 1 switches CFG off).
        image_guidance_scale: Image CFG scale of edits (≤ 1 switches it off).
        negative_prompt: Text of the unconditional branch.
    """

    image_size: int = 64
    num_inference_steps: int = 10
    guidance_scale: float = 2.0
    image_guidance_scale: float = 1.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        _require(self.num_inference_steps >= 1, f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        _require(self.guidance_scale >= 0, f"guidance_scale must be >= 0, got {self.guidance_scale}")
        _require(self.image_guidance_scale >= 0, f"image_guidance_scale must be >= 0, got {self.image_guidance_scale}")


@dataclass
class RLEvalConfig:
    """``[eval]``: mean reward on fixed held-out prompts, rendered with the ODE sampler.

    Attributes:
        every: RL steps between evaluations (0: never).
        num_prompts: Prompts evaluated (the first ones of ``split``'s stream).
        split: World split of the evaluation prompts.
        num_inference_steps: Euler steps of the evaluation images (Flow-GRPO: 40, more than rollouts).
        keep_best: After each evaluation that beats every earlier one, export the pipeline as it is at that
            step (the weights evaluated, without DiT-GRPO's EMA) to ``{output_dir}/best``, with ``best.json``
            (step and reward), since RL reward curves rise and then drift; SepGRPO then starts the next
            stage from it instead of ``final``. Needs ``every > 0``.
    """

    every: int = 0
    num_prompts: int = 16
    split: str = "val"
    num_inference_steps: int = 40
    keep_best: bool = False

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"every must be >= 0, got {self.every}")
        _require(
            not self.keep_best or self.every > 0,
            f"keep_best needs every > 0 (it keeps the best of the evaluations), got every = {self.every}",
        )
        _require(self.num_prompts >= 1, f"num_prompts must be >= 1, got {self.num_prompts}")
        _require(self.num_inference_steps >= 1, f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        check_split(self.split)


@dataclass
class RLTrainConfig:
    """``[train]``: how the trained model runs.

    Attributes:
        mixed_precision: ``bf16`` autocast, ``fp16``, or ``no``.
        gradient_checkpointing: Recompute block activations in the backward pass.
        lora_rank: Train LoRA adapters of this rank instead of all weights; 0 trains everything. The
            reference of the KL term is then the same model with its adapters disabled (no copy).
        lora_alpha: LoRA scale numerator (scale = alpha / rank).
        lora_target_modules: Linear layers that get adapters (MLLM: ``q_proj`` …; DiT: ``to_q`` …).
        reward_workers: Threads that score rewards off the loop's critical path (MLLM-GRPO: while the old
            policy scores its tokens; DiT-GRPO: each group while the next is sampled); 0 scores in the loop.
            Custom rewards must then be safe to call from several threads.
    """

    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_target_modules: list[str] = field(default_factory=list)
    reward_workers: int = 0

    def __post_init__(self) -> None:
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _require(self.reward_workers >= 0, f"reward_workers must be >= 0, got {self.reward_workers}")
        _require(self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}")
        _require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _require(not self.lora_rank or self.lora_target_modules, "lora_target_modules must not be empty")


@dataclass
class DiTRLTrainConfig(RLTrainConfig):
    """``[train]`` of DiT-GRPO: :class:`RLTrainConfig` and an EMA.

    Attributes:
        ema_decay: Export an exponential moving average of the trained weights; 0 disables.
    """

    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(
            not (self.ema_decay and self.lora_rank),
            "ema_decay must be 0 with LoRA (the adapters are merged into the weights at export)",
        )


def _check_rewards(rewards: dict[str, Any], prompts: PromptConfig, reward_models: dict[str, Any]) -> None:
    """Every declared reward model is well formed (nothing is loaded), every reward resolves, every weight is
    positive, and every scenario of the mix has rewards."""
    models = build_reward_models(reward_models)
    _require(bool(rewards), "rewards must hold at least one [rewards.<scenario>] table")
    for scenario, table in rewards.items():
        _require(isinstance(table, dict), f"rewards.{scenario} must be a table of reward = weight")
        try:
            build_rewards(table, models)
        except ValueError as err:
            raise ValueError(f"rewards.{scenario}: {err}") from None
    if prompts.kind == "world" and DEFAULT_REWARD_KEY not in rewards:
        missing = sorted(set(prompts.scenarios) - set(rewards))
        _require(not missing, f"rewards has no table for scenario(s) {missing} (nor a [rewards.default])")


def _check_run(run: RunConfig) -> None:
    _require(run.sample_every == 0, f"run.sample_every must be 0 for RL stages (use [eval]), got {run.sample_every}")
    _require(run.max_minutes == 0, f"run.max_minutes is for the supervised trainers; RL stages run to max_steps, "
                                   f"got {run.max_minutes}")


def _check_group(name: str, num_generations: int) -> None:
    _require(
        num_generations >= 2, f"{name} must be >= 2 (advantages compare rollouts of a group), got {num_generations}"
    )


# ---- stage 4: MLLM-GRPO -----------------------------------------------------------------------------


@dataclass
class MLLMGRPOParams:
    """``[grpo]`` of MLLM-GRPO.

    Attributes:
        num_generations: G, rollouts per prompt; all of a group are drawn by the frozen DiT from one
            initial noise (ThinkGen Sec. 3.3), so reward differences come from the MLLM's text only.
        temperature, top_p, top_k: Sampling of the thought and instruction (1.0 / 1.0 / 0: the policy's own
            distribution, which the log-probs score; Qwen3's 0.6 / 0.95 / 20 suit inference, not RL).
        max_thinking_tokens, max_instruction_tokens: Generation budgets (``ThinkingConfig``).
        num_iterations: μ, policy updates per batch of rollouts (1: on-policy; the clipped ratio then only
            matters from the second update on).
        epsilon_low, epsilon_high: Ratio clip ``[1 − ε_low, 1 + ε_high]``; DAPO's "clip-higher" 0.2 / 0.28.
        beta: Weight of the KL to the reference policy (k3 estimator, DeepSeekMath Eq. 4); 0 drops the
            reference (DAPO, Dr. GRPO), saving its forward.
        scale_rewards: Divide advantages by the group's reward std (GRPO). ``false`` keeps ``r − mean``
            (Dr. GRPO): a group whose rewards barely differ then barely moves the policy, instead of having
            its noise amplified to unit scale — safer with rule rewards that are mostly 0/1.
        std_eps: Added to the std before dividing.
        loss_aggregation: ``token``: mean over every generated token of the step (DAPO: long answers are
            not down-weighted); ``sequence``: mean over tokens per rollout, then over rollouts (GRPO).
        micro_batch_size: Rollouts per training forward (divides G; memory knob).
    """

    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_thinking_tokens: int = 256
    max_instruction_tokens: int = 64
    num_iterations: int = 1
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.0
    scale_rewards: bool = True
    std_eps: float = 1e-4
    loss_aggregation: str = "token"
    micro_batch_size: int = 8

    def __post_init__(self) -> None:
        _check_group("num_generations", self.num_generations)
        _require(self.temperature > 0, f"temperature must be > 0 (RL samples), got {self.temperature}")
        _require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        _require(self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}")
        _require(self.max_thinking_tokens >= 0, f"max_thinking_tokens must be >= 0, got {self.max_thinking_tokens}")
        _require(
            self.max_instruction_tokens >= 1, f"max_instruction_tokens must be >= 1, got {self.max_instruction_tokens}"
        )
        _require(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        _require(0 <= self.epsilon_low < 1, f"epsilon_low must be in [0, 1), got {self.epsilon_low}")
        _require(self.epsilon_high >= 0, f"epsilon_high must be >= 0, got {self.epsilon_high}")
        _require(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _require(self.std_eps > 0, f"std_eps must be > 0, got {self.std_eps}")
        _one_of("loss_aggregation", self.loss_aggregation, LOSS_AGGREGATIONS)
        _require(
            self.micro_batch_size >= 1 and self.num_generations % self.micro_batch_size == 0,
            f"micro_batch_size ({self.micro_batch_size}) must divide num_generations ({self.num_generations})",
        )


@dataclass
class MLLMGRPOConfig:
    """The recipe of stage 4 (``trainer = "mllm_grpo"``); see :mod:`thinkgen.rl.mllm_grpo`."""

    run: RunConfig = field(default_factory=RunConfig)
    model: RLModelConfig = field(default_factory=RLModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rewards: dict[str, Any] = field(default_factory=lambda: {DEFAULT_REWARD_KEY: {"world": 1.0}})
    reward_models: dict[str, Any] = field(default_factory=dict)
    sample: RolloutSampleConfig = field(default_factory=RolloutSampleConfig)
    grpo: MLLMGRPOParams = field(default_factory=MLLMGRPOParams)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))
    train: RLTrainConfig = field(
        default_factory=lambda: RLTrainConfig(lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    )
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _check_run(self.run)
        _check_rewards(self.rewards, self.prompts, self.reward_models)
        _require(self.distributed.strategy == "auto", "distributed.strategy must be 'auto' for MLLM-GRPO")


# ---- stage 5: DiT-GRPO ------------------------------------------------------------------------------


@dataclass
class DiTGRPOParams:
    """``[grpo]`` of DiT-GRPO (Flow-GRPO, Liu et al. 2025).

    Attributes:
        num_generations: G, images per prompt, each from its own initial noise and SDE noise.
        noise_level: a of the SDE's ``σ_t = a·sqrt(t/(1−t))`` (Flow-GRPO: 0.7).
        timestep_fraction: Share of the rollout's denoising steps trained per RL step (Flow-GRPO trains a
            subset; fewer steps, cheaper updates).
        timestep_selection: ``random`` (a fresh subset of steps every RL step, the same for all rollouts of
            the step) or ``first`` (always the earliest, noisiest steps, where the image's layout is decided).
        clip_range: ε of the ratio clip (Flow-GRPO: 1e-4; per-step log-probs are averages over many
            elements, so ratios stay very close to 1).
        adv_clip_max: Advantages are clipped to ``±adv_clip_max`` (Flow-GRPO: 5).
        beta: Weight of the KL ``‖μ_θ − μ_ref‖² / (2σ²)`` between the step means of the policy and the
            reference (Flow-GRPO: 0.004 for GenEval, 0 without).
        num_iterations: Policy updates per batch of rollouts.
        scale_rewards: Divide advantages by the group's reward std (Flow-GRPO does).
        std_eps: Added to the std before dividing (Flow-GRPO: 1e-4).
        think: The frozen MLLM thinks (greedily) before writing the instruction the DiT is conditioned on;
            ``false`` encodes the prompt in no-think mode. Computed once per prompt and shared by its group.
        max_thinking_tokens, max_instruction_tokens: Budgets of that thinking.
        micro_batch_size: Rollouts per DiT forward, in the rollout and in the update alike (divides G).
    """

    num_generations: int = 8
    noise_level: float = 0.7
    timestep_fraction: float = 0.5
    timestep_selection: str = "random"
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    beta: float = 0.004
    num_iterations: int = 1
    scale_rewards: bool = True
    std_eps: float = 1e-4
    think: bool = False
    max_thinking_tokens: int = 256
    max_instruction_tokens: int = 64
    micro_batch_size: int = 8

    def __post_init__(self) -> None:
        _check_group("num_generations", self.num_generations)
        _require(self.max_thinking_tokens >= 0, f"max_thinking_tokens must be >= 0, got {self.max_thinking_tokens}")
        _require(
            self.max_instruction_tokens >= 1, f"max_instruction_tokens must be >= 1, got {self.max_instruction_tokens}"
        )
        _require(self.noise_level > 0, f"noise_level must be > 0, got {self.noise_level}")
        _require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        _one_of("timestep_selection", self.timestep_selection, TIMESTEP_SELECTIONS)
        _require(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        _require(self.adv_clip_max > 0, f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        _require(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        _require(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        _require(self.std_eps > 0, f"std_eps must be > 0, got {self.std_eps}")
        _require(
            self.micro_batch_size >= 1 and self.num_generations % self.micro_batch_size == 0,
            f"micro_batch_size ({self.micro_batch_size}) must divide num_generations ({self.num_generations})",
        )


@dataclass
class DiTGRPOConfig:
    """The recipe of stage 5 (``trainer = "dit_grpo"``); see :mod:`thinkgen.rl.dit_grpo`."""

    run: RunConfig = field(default_factory=RunConfig)
    model: RLModelConfig = field(default_factory=RLModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rewards: dict[str, Any] = field(default_factory=lambda: {DEFAULT_REWARD_KEY: {"world": 1.0}})
    reward_models: dict[str, Any] = field(default_factory=dict)
    sample: RolloutSampleConfig = field(default_factory=RolloutSampleConfig)
    grpo: DiTGRPOParams = field(default_factory=DiTGRPOParams)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    train: DiTRLTrainConfig = field(
        default_factory=lambda: DiTRLTrainConfig(lora_target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _check_run(self.run)
        _check_rewards(self.rewards, self.prompts, self.reward_models)
        _require(self.distributed.strategy == "auto", "distributed.strategy must be 'auto' for DiT-GRPO")


# ---- SepGRPO: stage 4 then stage 5 -------------------------------------------------------------------


@dataclass
class ScheduleConfig:
    """``[schedule]`` of SepGRPO.

    Attributes:
        output_dir: Root of the run; round ``r``'s stages write ``round{r}/stage4_mllm_grpo`` and
            ``round{r}/stage5_dit_grpo`` under it (their own ``run.output_dir`` is replaced).
        num_rounds: 1 runs stage 4 then stage 5 (the paper); more alternate them, each stage starting from
            the pipeline the previous one exported.
    """

    output_dir: str = "runs/nano/sepgrpo"
    num_rounds: int = 1

    def __post_init__(self) -> None:
        _require(bool(self.output_dir), "output_dir must not be empty")
        _require(self.num_rounds >= 1, f"num_rounds must be >= 1, got {self.num_rounds}")


@dataclass
class SepGRPOConfig:
    """The recipe of SepGRPO (``trainer = "sepgrpo"``): ``[schedule]``, ``[mllm_grpo.*]``, ``[dit_grpo.*]``.

    The first stage starts from ``mllm_grpo.model.pipeline``; ``dit_grpo.model.pipeline`` is replaced by
    the pipeline stage 4 exported. See :mod:`thinkgen.rl.sepgrpo`.
    """

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mllm_grpo: MLLMGRPOConfig = field(default_factory=MLLMGRPOConfig)
    dit_grpo: DiTGRPOConfig = field(default_factory=DiTGRPOConfig)


RL_TRAINERS: dict[str, type] = {"mllm_grpo": MLLMGRPOConfig, "dit_grpo": DiTGRPOConfig, "sepgrpo": SepGRPOConfig}
