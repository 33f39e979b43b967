"""Training configs: one dataclass per trainer, filled from one TOML recipe per stage and scale.

A recipe is a TOML file whose sections mirror the dataclasses below::

    trainer = "sft"                  # "sft" (DiT stages 1-3), "mllm_sft" (the nano MLLM) or "codec" (the
                                     # nano palette autoencoder); the RL trainers (mllm_grpo, dit_grpo,
                                     # sepgrpo) are in thinkgen.rl.config
    [run]       output dir, seed, steps, logging / saving / sampling cadence
    [model]     where the MLLM, DiT and codec come from (codec: the world and the autoencoder's shape)
    [data]      batch sizes, image size, [[data.sources]] with mixing weights (codec: world images)
    [optim]     AdamW and its LR schedule
    [flow]      flow-matching loss: time distribution, prompt / reference dropout (sft only)
    [train]     stage, precision, EMA, LoRA, gradient checkpointing, feature cache (codec: loss weights)
    [sample]    fixed prompts drawn at intervals (sft only)
    [distributed]  strategy (sft and mllm_sft)

Every field of every section is documented in its dataclass; a key the dataclass does not have, a value of
the wrong type or an impossible value is an error that names the file and the key, raised by
:func:`load_recipe` before any model is built. Command-line overrides (``--set optim.lr=1e-4``) are applied
to the parsed TOML before validation, so they are checked the same way.

Example:
    >>> config = load_recipe("recipes/nano/stage2_dit.toml", overrides=["run.max_steps=10"])
    >>> config.optim.lr
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkgen import DTYPES
from thinkgen.world.scenarios import check_kinds, resolve_scenarios
from thinkgen.world.scene import get_preset
from thinkgen.world.splits import check_split

STAGES = ("connector", "dit", "finetune")
TIME_DISTRIBUTIONS = ("logit_normal", "uniform")
SCHEDULES = ("constant", "cosine", "linear")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
STRATEGIES = ("auto", "fsdp")
SOURCE_KINDS = ("world", "jsonl")
PROMPT_FIELDS = ("answer", "instruction")


class RecipeError(ValueError):
    """A recipe (or an override) that cannot be run; the message names the file and the key."""


def _require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; messages start with the field's name."""
    if not condition:
        raise ValueError(message)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{name} = {value!r} is not allowed; allowed: {', '.join(allowed)}")


# ---- sections shared by every trainer ------------------------------------------------------------


@dataclass
class RunConfig:
    """``[run]``: where a run writes, how long it runs and how often it reports.

    Attributes:
        output_dir: Folder of the run: ``checkpoints/``, ``metrics.jsonl``, ``samples/``, ``final/``.
        seed: Seeds model init, the data order, noise and dropout; a run is a function of its recipe.
        max_steps: Optimizer steps of the whole run (a resumed run stops at the same step).
        log_every: Steps between metric lines (loss, lr, samples/s).
        save_every: Steps between checkpoints; 0 saves only at the end.
        keep_last: Checkpoints kept on disk (older ones are deleted after a new one is complete).
        sample_every: Steps between sample-image grids (``[sample]``); 0 never draws.
        use_tensorboard: Also write TensorBoard events when ``tensorboard`` is installed.
        resume: Continue from the newest complete checkpoint in ``output_dir`` when there is one.
        max_minutes: Wall-clock budget of one invocation's training loop in minutes (0: none; supervised
            trainers only). When it is spent the run saves a checkpoint and exports what it has; the same
            command continues it, exactly, up to ``max_steps`` (for a machine lent for a fixed time).
    """

    output_dir: str = "runs/nano"
    seed: int = 0
    max_steps: int = 1000
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    sample_every: int = 0
    use_tensorboard: bool = True
    resume: bool = True
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        _require(bool(self.output_dir), "output_dir must not be empty")
        _require(self.max_minutes >= 0, f"max_minutes must be >= 0 (0: no budget), got {self.max_minutes}")
        _require(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _require(self.save_every >= 0, f"save_every must be >= 0, got {self.save_every}")
        _require(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")
        _require(self.sample_every >= 0, f"sample_every must be >= 0, got {self.sample_every}")


@dataclass
class SourceConfig:
    """``[[data.sources]]``: one data source and its share of the mix.

    Attributes:
        name: Label in logs (defaults to the kind and the path / preset).
        kind: ``world`` (the synthetic world, made on the fly) or ``jsonl`` (records + image files in the
            export schema: ``instruction``, ``output_image``, ``input_images``, optional ``answer``,
            ``reasoning``, ``task_type``, ``width``/``height``; image paths relative to the file).
        weight: Relative share of this source among all sources (normalised over the sources).
        path: The JSONL file (``jsonl`` only).
        scenarios: World scenarios drawn in turn (``world`` only); ``["all"]`` for every scenario.
        kinds: Scenario → the sub-kinds its samples are drawn from, evenly (``world`` only; e.g. ``{edit =
            ["move"]}`` for a fine-tune on what a model gets wrong); a scenario not named draws every kind.
        preset: World difficulty preset (``world`` only).
        split: World split (``world`` only): ``train``, ``val`` or ``test``.
        seed: World stream seed (``world`` only).
    """

    name: str = ""
    kind: str = "world"
    weight: float = 1.0
    path: str = ""
    scenarios: list[str] = field(default_factory=lambda: ["all"])
    kinds: dict[str, Any] = field(default_factory=dict)
    preset: str = "nano"
    split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, SOURCE_KINDS)
        _require(self.weight > 0, f"weight must be > 0, got {self.weight}")
        if self.kind == "jsonl":
            _require(bool(self.path), "path must name the JSONL file of a jsonl source")
            _require(not self.kinds, "kinds are for world sources; a jsonl source's records are its samples")
        else:
            _require(not self.path, f"path is only for jsonl sources, got {self.path!r} for a world source")
            _require(bool(self.scenarios), "scenarios must not be empty")
            for name, check, value in [
                *(("scenarios", resolve_scenarios, scenario) for scenario in self.scenarios),
                ("preset", get_preset, self.preset),
                ("split", check_split, self.split),
            ]:
                try:
                    check(value)
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from None
            check_kinds(self.kinds, [s for name in self.scenarios for s in resolve_scenarios(name)])
        if not self.name:
            self.name = f"jsonl:{self.path}" if self.kind == "jsonl" else f"world:{self.preset}"


@dataclass
class DataConfig:
    """``[data]``: batches, image sizes and sources.

    Attributes:
        sources: The sources; each item's source is drawn with probability ∝ its ``weight``.
        global_batch_size: Samples per optimizer step over all processes (fixed whatever the hardware).
        micro_batch_size: Samples per forward on one process; the gradient is accumulated over
            ``global_batch_size / (micro_batch_size · processes)`` micro-batches.
        max_image_pixels: Images are downscaled (aspect kept) to at most this many pixels.
        size_multiple: Image sides are cropped to a multiple of this (codec factor × DiT patch size);
            images of equal size form a bucket and every batch comes from one bucket.
        prompt_field: Text the DiT is conditioned on: ``answer`` (the instruction the MLLM writes after
            ``</think>``; falls back to ``instruction`` when a record has none) or ``instruction``.
        think_context: Share of samples with an answer whose answer is encoded in the context a think-mode
            call gives it (the user prompt, the thought, then the answer: :meth:`ThinkGenMLLM.encode_thought`)
            instead of the pseudo-CoT template; needs ``prompt_field = "answer"``. 0 trains on the pseudo-CoT
            template only, as the paper's stage 2.
        num_workers: DataLoader worker processes (0 loads in the training process).
    """

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    global_batch_size: int = 32
    micro_batch_size: int = 32
    max_image_pixels: int = 64 * 64
    size_multiple: int = 8
    prompt_field: str = "answer"
    think_context: float = 0.0
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(bool(self.sources), "sources must hold at least one [[data.sources]] table")
        names = [s.name for s in self.sources]
        _require(len(set(names)) == len(names), f"sources need distinct names, got {names}")
        _require(self.global_batch_size >= 1, f"global_batch_size must be >= 1, got {self.global_batch_size}")
        _require(self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        _require(
            self.global_batch_size % self.micro_batch_size == 0,
            f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
            f"({self.micro_batch_size})",
        )
        _require(self.size_multiple >= 1, f"size_multiple must be >= 1, got {self.size_multiple}")
        _require(
            self.max_image_pixels >= self.size_multiple**2,
            f"max_image_pixels ({self.max_image_pixels}) must be >= size_multiple² ({self.size_multiple**2})",
        )
        _one_of("prompt_field", self.prompt_field, PROMPT_FIELDS)
        _require(0.0 <= self.think_context <= 1.0, f"think_context must be in [0, 1], got {self.think_context}")
        _require(
            self.think_context == 0.0 or self.prompt_field == "answer",
            f"think_context = {self.think_context} needs prompt_field = \"answer\" (the think-mode context ends "
            f"with the answer), got {self.prompt_field!r}",
        )
        _require(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")


@dataclass
class OptimConfig:
    """``[optim]``: AdamW and the LR schedule.

    Attributes:
        lr: Peak learning rate.
        betas: AdamW betas.
        eps: AdamW eps.
        weight_decay: Decoupled weight decay (applied to matrices only, not to norms, biases, embeddings).
        warmup_steps: Linear warm-up from 0 to ``lr``.
        schedule: After warm-up: ``constant``, ``cosine`` or ``linear`` decay to ``min_lr_ratio · lr``.
        min_lr_ratio: Final LR as a fraction of ``lr`` (decaying schedules).
        max_grad_norm: Clip the global gradient norm to this; 0 disables clipping.
    """

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        _require(self.eps > 0, f"eps must be > 0, got {self.eps}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _one_of("schedule", self.schedule, SCHEDULES)
        _require(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")


@dataclass
class DistributedConfig:
    """``[distributed]``: how models are spread over processes (see ``train/distributed.py``).

    Attributes:
        strategy: ``auto`` (one process, or DDP under ``accelerate launch`` / ``torchrun``) or ``fsdp``
            (FSDP2, one shard unit per class in the model's ``_no_split_modules``; GPUs, or CPU processes
            over gloo).
    """

    strategy: str = "auto"

    def __post_init__(self) -> None:
        _one_of("strategy", self.strategy, STRATEGIES)


# ---- DiT stages 1-3 --------------------------------------------------------------------------------


@dataclass
class DiTModelConfig:
    """``[model]`` of the DiT stages.

    Attributes:
        mllm: Folder of the frozen MLLM (``ThinkGenMLLM.from_pretrained``), a pipeline folder (its MLLM), or
            ``tiny`` for a tiny random Qwen3-VL built in memory (tests and smoke runs).
        mllm_dtype: dtype of the frozen MLLM (``float32``, ``bfloat16``, ``float16``).
        transformer: Folder of a DiT to start from (diffusers ``save_pretrained`` layout, e.g. the
            ``final/transformer`` of the previous stage); empty: a new DiT built from ``dit``.
        depth_multiplier: Start from ``transformer`` with this many times its joint blocks, the new ones
            identity copies (``ThinkGenTransformer2DModel.deepened``): more capacity for a DiT that has
            stopped improving, without losing what it learned. 1: as loaded.
        dit: Constructor arguments of a new ``ThinkGenTransformer2DModel`` (``text_feat_dim`` defaults to
            the MLLM's width, ``in_channels`` to the codec's channels).
        codec: ``pixel`` (identity codec: the DiT denoises pixels) or a folder of a diffusers
            ``AutoencoderKL`` (latents ``(z − shift)·scale``).
        glyph_preset: Train the DiT to read glyph references (:mod:`thinkgen.glyphs`) laid out by this world
            preset: every text-to-image sample of a world source gets its target's words rendered alone as a
            reference image, and the exported pipeline plans one for every instruction that quotes text.
            World sources must then use this preset; JSONL samples get none. Empty: no glyph references.
        glyph_objects: Glyph references also mark the box of each object (:mod:`thinkgen.glyphs`), the target's
            in training and a planned layout at inference, so every text-to-image world sample with objects
            gets one.
            Needs ``glyph_preset``.
        glyph_edits: Edits get a second reference beside the input image, the edit's marks
            (:func:`thinkgen.glyphs.edit_marks`): where something goes away, where an object goes, the words
            it writes; in training the difference between input and target scene, at inference a plan read
            from the instruction and the input image. Needs ``glyph_preset``.
        glyph_shapes: Object marks and the objects edit marks draw show the silhouette of each object's shape
            (in the mark grey) rather than its box, so the DiT need not bind shape words to places. Needs
            ``glyph_objects`` or ``glyph_edits``.
        glyph_move_colours: An object an edit moves is drawn in its own colour among the edit marks (as the
            input shows it), not in the mark grey. Needs ``glyph_edits`` and ``glyph_shapes``.
    """

    mllm: str = "tiny"
    mllm_dtype: str = "float32"
    transformer: str = ""
    depth_multiplier: int = 1
    dit: dict[str, Any] = field(default_factory=dict)
    codec: str = "pixel"
    glyph_preset: str = ""
    glyph_objects: bool = False
    glyph_edits: bool = False
    glyph_shapes: bool = False
    glyph_move_colours: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.mllm), "mllm must be a folder or 'tiny'")
        _one_of("mllm_dtype", self.mllm_dtype, DTYPES)
        _require(
            not (self.transformer and self.dit),
            "dit builds a new DiT and transformer loads one; give only one of them",
        )
        _require(self.depth_multiplier >= 1, f"depth_multiplier must be >= 1, got {self.depth_multiplier}")
        _require(
            self.depth_multiplier == 1 or bool(self.transformer),
            "depth_multiplier deepens a trained DiT: set transformer to its folder (a new DiT takes "
            "dit.num_layers)",
        )
        _require(bool(self.codec), "codec must be 'pixel' or an AutoencoderKL folder")
        if self.glyph_preset:
            try:
                get_preset(self.glyph_preset)
            except ValueError as err:
                raise ValueError(f"glyph_preset: {err}") from None
        _require(not self.glyph_objects or bool(self.glyph_preset),
                 "glyph_objects marks objects in glyph references: set glyph_preset too")
        _require(not self.glyph_edits or bool(self.glyph_preset),
                 "glyph_edits draws edit marks by a world's rules: set glyph_preset too")
        _require(not self.glyph_shapes or self.glyph_objects or self.glyph_edits,
                 "glyph_shapes draws object and edit marks as silhouettes: set glyph_objects or glyph_edits too")
        _require(not self.glyph_move_colours or (self.glyph_edits and self.glyph_shapes),
                 "glyph_move_colours draws moved objects' silhouettes in their colour: set glyph_edits and "
                 "glyph_shapes too")


@dataclass
class FlowConfig:
    """``[flow]``: the flow-matching objective (t = 0 noise, t = 1 data; target ``v = x1 − x0``).

    Attributes:
        time_distribution: ``logit_normal`` (SD3's default: more weight on mid times) or ``uniform``.
        logit_mean: Mean of the normal behind the logit-normal.
        logit_std: Std of the normal behind the logit-normal.
        use_time_shift: Apply the sampler's resolution-dependent shift ``t/(m − m·t + t)`` to the drawn t.
        time_shift_reference_side: Latent side at which that shift is 1 (``m = sqrt(h·w) / side``): the
            released model's 40, or the model's own latent side when it is trained from scratch at a small
            size (a reference far above the latent side makes m < 1, which leaves few training times and
            sampling steps near noise, where the layout is decided). The sampler of the exported pipeline
            and of the sample grids uses the same value.
        prompt_dropout: Probability that a sample's text is replaced by ``negative_prompt`` (CFG).
        ref_dropout: Probability that an edit sample's reference images are dropped (image CFG).
        mark_dropout: Probability that a sample's marks are left out: a text-to-image sample's glyph
            reference without its object marks (``model.glyph_objects``), an edit without its edit marks
            (``model.glyph_edits``), so that the DiT still works where the planner cannot tell.
        ink_weight: Loss weight of the latent cells under the target's foreground (pixels that differ from its
            top-left pixel, taken as the background), relative to the rest; the loss is renormalised by the
            mean weight. 1 (the paper's plain MSE) turns it off; above 1 keeps small objects on a plain
            canvas from being a cheap cell to leave blank.
        negative_prompt: The text of the unconditional branch, as the sampler uses it.
    """

    time_distribution: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    use_time_shift: bool = True
    time_shift_reference_side: float = 40.0
    prompt_dropout: float = 0.1
    ref_dropout: float = 0.1
    mark_dropout: float = 0.0
    ink_weight: float = 1.0
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        _one_of("time_distribution", self.time_distribution, TIME_DISTRIBUTIONS)
        _require(self.logit_std > 0, f"logit_std must be > 0, got {self.logit_std}")
        _require(self.ink_weight > 0, f"ink_weight must be > 0, got {self.ink_weight}")
        _require(self.time_shift_reference_side > 0,
                 f"time_shift_reference_side must be > 0, got {self.time_shift_reference_side}")
        _require(0 <= self.prompt_dropout < 1, f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        _require(0 <= self.ref_dropout < 1, f"ref_dropout must be in [0, 1), got {self.ref_dropout}")
        _require(0 <= self.mark_dropout < 1, f"mark_dropout must be in [0, 1), got {self.mark_dropout}")


@dataclass
class SFTTrainConfig:
    """``[train]`` of the DiT stages.

    Attributes:
        stage: ``connector`` (stage 1: connector + prepadding only), ``dit`` (stage 2: the whole DiT),
            ``finetune`` (stage 3: the whole DiT, or LoRA, on high-quality data).
        mixed_precision: ``bf16`` autocast (where the device has it), ``fp16``, or ``no``.
        gradient_checkpointing: Recompute DiT block activations in the backward pass.
        ema_decay: Keep an exponential moving average of the trained weights with this decay; 0 disables.
            The final export uses the EMA weights when it is on.
        lora_rank: Train LoRA adapters of this rank instead of the full DiT (stages ``dit``/``finetune``);
            0 disables.
        lora_alpha: LoRA scale numerator (scale = alpha / rank).
        lora_target_modules: Names of the DiT linear layers that get adapters.
        cache_features: Keep the MLLM features of each (text, images) pair in memory after first use.
        max_cached_features: Entries of that cache (oldest dropped first).
    """

    stage: str = "dit"
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    cache_features: bool = False
    max_cached_features: int = 100_000

    def __post_init__(self) -> None:
        _one_of("stage", self.stage, STAGES)
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}")
        _require(
            not (self.lora_rank and self.stage == "connector"),
            "lora_rank must be 0 for stage 'connector' (stage 1 trains the connector itself)",
        )
        _require(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _require(bool(self.lora_target_modules), "lora_target_modules must not be empty")
        _require(self.max_cached_features >= 1, f"max_cached_features must be >= 1, got {self.max_cached_features}")


@dataclass
class SampleConfig:
    """``[sample]``: the fixed prompts drawn every ``run.sample_every`` steps (no-think mode).

    Attributes:
        prompts: Prompts of the grid.
        num_inference_steps: Euler steps.
        guidance_scale: Text CFG scale.
        seed: Seed of the initial noise (the same every time, so grids are comparable).
        image_size: Side of the square images, in pixels.
    """

    prompts: list[str] = field(default_factory=lambda: ["one red circle", "two blue squares"])
    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    seed: int = 0
    image_size: int = 64

    def __post_init__(self) -> None:
        _require(bool(self.prompts), "prompts must not be empty")
        _require(self.num_inference_steps >= 1, f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        _require(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")


@dataclass
class SFTStageConfig:
    """The whole recipe of a DiT stage (``trainer = "sft"``); see :mod:`thinkgen.train.sft`."""

    run: RunConfig = field(default_factory=RunConfig)
    model: DiTModelConfig = field(default_factory=DiTModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _require(
            not (self.distributed.strategy == "fsdp" and self.train.ema_decay > 0),
            "train.ema_decay must be 0 with distributed.strategy = 'fsdp' (the EMA keeps whole tensors)",
        )
        _require(
            not (self.distributed.strategy == "fsdp" and self.train.lora_rank),
            "train.lora_rank must be 0 with distributed.strategy = 'fsdp' (adapters are merged unsharded)",
        )
        if self.model.glyph_preset:
            other = sorted({s.preset for s in self.data.sources if s.kind == "world"} - {self.model.glyph_preset})
            _require(
                not other,
                f"model.glyph_preset = {self.model.glyph_preset!r} but world sources use preset(s) {other}: "
                "glyph references follow one preset's layout rules, so every world source must use it",
            )
        _require(self.flow.mark_dropout == 0 or self.model.glyph_objects or self.model.glyph_edits,
                 f"flow.mark_dropout = {self.flow.mark_dropout} drops marks: set model.glyph_objects or "
                 "model.glyph_edits too")


# ---- the nano MLLM stage ---------------------------------------------------------------------------


@dataclass
class MLLMModelConfig:
    """``[model]`` of the MLLM stage.

    Attributes:
        init: MLLM to continue from: its folder (``ThinkGenMLLM`` layout, with its processor), a pipeline
            folder, or a shipped model's name (``nano``); empty: a new tiny Qwen3-VL. From a pipeline, ``final/``
            is that pipeline with the trained MLLM.
        tiny: ``TinyQwen3VLSpec`` fields of the new model (``vocab_size`` included).
        num_corpus_samples: World samples whose texts train the new tokenizer (with its default corpus).
        use_system_prompt: Put ThinkGen's system prompt in every sample, as inference does.
    """

    init: str = ""
    tiny: dict[str, Any] = field(default_factory=dict)
    num_corpus_samples: int = 3000
    use_system_prompt: bool = True

    def __post_init__(self) -> None:
        _require(not (self.init and self.tiny), "tiny builds a new model and init loads one; give only one")
        _require(self.num_corpus_samples >= 0, f"num_corpus_samples must be >= 0, got {self.num_corpus_samples}")


@dataclass
class MLLMTrainConfig:
    """``[train]`` of the MLLM stage.

    Attributes:
        mixed_precision: ``bf16``, ``fp16`` or ``no``.
        gradient_checkpointing: Recompute decoder-layer activations in the backward pass.
        max_seq_len: Longer samples are an error of the data (named in the log) and skipped.
    """

    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _require(self.max_seq_len >= 16, f"max_seq_len must be >= 16, got {self.max_seq_len}")


@dataclass
class MLLMSFTConfig:
    """The whole recipe of the nano MLLM stage (``trainer = "mllm_sft"``); see :mod:`thinkgen.train.mllm_sft`."""

    run: RunConfig = field(default_factory=RunConfig)
    model: MLLMModelConfig = field(default_factory=MLLMModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: MLLMTrainConfig = field(default_factory=MLLMTrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        _require(
            self.distributed.strategy == "auto",
            "distributed.strategy must be 'auto' for the MLLM stage (the nano MLLM fits every device whole)",
        )
        _require(
            self.data.think_context == 0.0,
            "data.think_context is a DiT-stage setting (which states the DiT trains on); the MLLM stage learns "
            "to write the thought itself, so leave it at 0",
        )


# ---- the nano codec stage --------------------------------------------------------------------------


@dataclass
class CodecModelConfig:
    """``[model]`` of the codec stage: the world the codec is for, and the
    :class:`~thinkgen.models.nano_autoencoder.NanoAutoencoder` arguments.

    Attributes:
        preset: World preset; its colours are the codec's palette and its canvas the image size.
        latent_channels: Channels of the latent (the DiT's ``in_channels``).
        downscale_factor: Pixels per latent cell along each side; a power of two dividing the canvas.
        base_channels: Width at half resolution; deeper stages are wider.
        blocks_per_stage: Residual blocks at each resolution.
    """

    preset: str = "nano"
    latent_channels: int = 8
    downscale_factor: int = 4
    base_channels: int = 48
    blocks_per_stage: int = 1

    def __post_init__(self) -> None:
        try:
            world = get_preset(self.preset)
        except ValueError as err:
            raise ValueError(f"preset: {err}") from None
        _require(self.latent_channels >= 1, f"latent_channels must be >= 1, got {self.latent_channels}")
        factor = self.downscale_factor
        _require(
            factor >= 2 and factor & (factor - 1) == 0 and world.canvas_px % factor == 0,
            f"downscale_factor must be a power of two >= 2 dividing the {self.preset} canvas "
            f"({world.canvas_px} px), got {factor}",
        )
        _require(self.base_channels >= 2, f"base_channels must be >= 2, got {self.base_channels}")
        _require(self.blocks_per_stage >= 0, f"blocks_per_stage must be >= 0, got {self.blocks_per_stage}")


@dataclass
class CodecDataConfig:
    """``[data]`` of the codec stage: world images (targets and edit inputs), made on the fly.

    Attributes:
        batch_size: Images per optimizer step.
        scenarios: World scenarios drawn in turn; ``["all"]`` for every scenario.
        seed: Seed of the world streams (train, val and test splits).
        val_images: Val-split images of the checks during training.
        test_images: Test-split images of the check at the end.
        stats_images: Train-split images the latent normalisation is measured on at the end.
    """

    batch_size: int = 32
    scenarios: list[str] = field(default_factory=lambda: ["composition", "text", "edit"])
    seed: int = 0
    val_images: int = 128
    test_images: int = 1000
    stats_images: int = 1024

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(bool(self.scenarios), "scenarios must not be empty")
        for scenario in self.scenarios:
            try:
                resolve_scenarios(scenario)
            except ValueError as err:
                raise ValueError(f"scenarios: {err}") from None
        _require(self.val_images >= 1, f"val_images must be >= 1, got {self.val_images}")
        _require(self.test_images >= 1, f"test_images must be >= 1, got {self.test_images}")
        _require(self.stats_images >= 1, f"stats_images must be >= 1, got {self.stats_images}")


@dataclass
class CodecTrainConfig:
    """``[train]`` of the codec stage.

    Attributes:
        ink_weight: Cross-entropy weight of ink pixels (background pixels weigh 1): the background covers
            most of an image but carries no geometry.
        latent_noise: Std of the Gaussian jitter added to the (tanh-bounded) latents in training, so the
            decoder tolerates a DiT's small errors.
        eval_every: Steps between val checks (pixel-exact, judge-exact); 0 checks only at the end.
    """

    ink_weight: float = 5.0
    latent_noise: float = 0.1
    eval_every: int = 500

    def __post_init__(self) -> None:
        _require(self.ink_weight > 0, f"ink_weight must be > 0, got {self.ink_weight}")
        _require(self.latent_noise >= 0, f"latent_noise must be >= 0, got {self.latent_noise}")
        _require(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")


@dataclass
class CodecConfig:
    """The whole recipe of the nano codec stage (``trainer = "codec"``); see :mod:`thinkgen.train.codec`."""

    run: RunConfig = field(default_factory=RunConfig)
    model: CodecModelConfig = field(default_factory=CodecModelConfig)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: CodecTrainConfig = field(default_factory=CodecTrainConfig)

    def __post_init__(self) -> None:
        _require(
            self.optim.weight_decay == 0,
            f"optim.weight_decay must be 0 for the codec, got {self.optim.weight_decay}: decay applies to "
            "linear layers only and the codec has none",
        )


TRAINERS: dict[str, type] = {"sft": SFTStageConfig, "mllm_sft": MLLMSFTConfig, "codec": CodecConfig}
TrainerConfig = SFTStageConfig | MLLMSFTConfig | CodecConfig


def all_trainers() -> dict[str, type]:
    """Every trainer's config class by recipe name: the supervised ones here and the RL ones of
    :mod:`thinkgen.rl.config` (imported late: those configs build on this module's sections)."""
    from thinkgen.rl.config import RL_TRAINERS

    return {**TRAINERS, **RL_TRAINERS}


# ---- recipe loading ---------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the field type ``hint``; TOML already gives typed values."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a table, got {value!r}")
        return _build(hint, value, f"{key}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise RecipeError(f"{key} must be a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a table, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"config field {key} has a union type; fields must have one type")
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int in Python; a recipe saying `steps = true` is still a mistake.
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise RecipeError(f"{key} must be {_type_name(hint)}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Make ``cls`` from a TOML table, naming the offending key on any error."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecipeError(
            f"unknown key {prefix}{unknown[0]}; allowed in [{prefix.rstrip('.') or 'top level'}]: {', '.join(names)}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, RecipeError):
            raise
        raise RecipeError(f"{prefix}{err}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` → (["optim", "lr"], 1e-4); the value is read as TOML, else as a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[:i])} has no item {part}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a table")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override {'.'.join(path)}: no item {last}")
        node[int(last)] = value
    else:
        node[last] = value


def config_from_dict(data: dict[str, Any]) -> TrainerConfig:
    """Build the trainer config named by ``data["trainer"]`` from a parsed recipe."""
    data = dict(data)
    trainer = data.pop("trainer", None)
    trainers = all_trainers()
    if trainer not in trainers:
        raise RecipeError(f"trainer = {trainer!r} is not allowed; allowed: {', '.join(trainers)}")
    return _build(trainers[trainer], data)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainerConfig:
    """Read a TOML recipe, apply ``section.key=value`` overrides, and validate every value.

    Args:
        path: The recipe file.
        overrides: ``section.key=value`` strings (values in TOML syntax; a bare word is a string).

    Returns:
        The config of the recipe's ``trainer``: :class:`SFTStageConfig`, :class:`MLLMSFTConfig`,
        :class:`CodecConfig`, or one of
        :mod:`thinkgen.rl.config` (``mllm_grpo``, ``dit_grpo``, ``sepgrpo``).

    Raises:
        FileNotFoundError: No such file.
        RecipeError: Bad TOML, unknown key, wrong type or impossible value; the message starts with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for override in overrides or []:
            _apply_override(data, *_parse_override(override))
        return config_from_dict(data)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML: {err}") from None
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (written beside the run, so a run records what it ran)."""
    trainer = next((name for name, cls in all_trainers().items() if isinstance(config, cls)), None)
    out = dataclasses.asdict(config)
    return {"trainer": trainer, **out} if trainer else out
