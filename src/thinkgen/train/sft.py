"""Supervised DiT stages 1-3 of ThinkGen: flow matching on the frozen MLLM's no-think features.

Stages (ThinkGen Sec. 4.1), chosen by ``train.stage``:

1. ``connector``: only the connector (``time_caption_embed.caption_embedder``) and the prepadding states
   (``prepad_embed``) learn; the DiT and MLLM are frozen. Aligns a pretrained DiT to the MLLM's features.
2. ``dit``: the whole DiT learns on the pseudo-CoT template ``[SYS]+[C]+<think></think>+[C]``.
3. ``finetune``: the whole DiT (or LoRA adapters) on high-quality data at higher resolution and lower LR;
   the stage differs from 2 only by its recipe.

Conditioning: the MLLM encodes each sample's caption ``C`` in no-think mode (``encode_prompt(C, images,
think=False)``), one forward, features of the tokens after ``</think>``. ``C`` is the record's ``answer``
(the instruction the MLLM writes after thinking, e.g. "three black triangles" for a riddle about a sail),
so the DiT learns to draw what a thinking MLLM will ask for; edit samples give the MLLM their input
images too, and the DiT gets them as VAE latents (``ref_image_hidden_states``).

Commands:

    # CPU, nano (one process):
    thinkgen train --recipe recipes/nano/stage2_dit.toml
    # two CPU processes (DDP over gloo):
    torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe recipes/nano/stage2_dit.toml
    # full scale, 8 GPUs per node, FSDP2 (set in the recipe's [distributed]):
    accelerate launch --num_processes 8 -m thinkgen.cli train --recipe recipes/full/stage2.toml

A run killed at any moment resumes from its newest checkpoint with the same command and continues
exactly as if it had never stopped (same batches, noise, dropout, optimizer state, LR).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from PIL import Image
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from thinkgen.glyphs import plan_glyphs, render_edit_marks, render_glyphs
from thinkgen.imageio import pil_to_tensor, save_with_sidecar, tensor_to_pil
from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.models.mllm import ThinkGenMLLM
from thinkgen.models.vae import ImageCodec, PixelCodec, load_codec
from thinkgen.pipeline import TORCH_DTYPES, PipelineConfig, ThinkGenPipeline, load_transformer, mllm_folders
from thinkgen.sampling import sample_latents, time_shift_factor
from thinkgen.train import run as R
from thinkgen.train.checkpoint import RNGState, ValueState
from thinkgen.train.config import DataConfig, SFTStageConfig
from thinkgen.train.data import Record, Source, build_sources, fit_image, fitted_size
from thinkgen.train.distributed import OptimizerState, TrainableWeights, build_accelerator, wrap_model
from thinkgen.train.logs import MetricsLogger
from thinkgen.train.optim import build_scheduler

# The think-mode context of a caption: (the user's prompt, the reasoning inside <think>…</think>).
Thought = tuple[str, str]

logger = logging.getLogger(__name__)



@dataclass
class SFTResult:
    """What :func:`train` returns.

    Attributes:
        step: The last optimizer step reached.
        losses: The mean loss of every step this call ran, in order.
        transformer: The exported DiT (LoRA merged, EMA applied) on the main process, else ``None``.
        model: The trained module as wrapped for training, on every process.
        output_dir: Where ``final/transformer`` and ``final/vae`` were written.
    """

    step: int
    losses: list[float] = field(default_factory=list)
    transformer: ThinkGenTransformer2DModel | None = None
    model: torch.nn.Module | None = None
    output_dir: Path | None = None


# ---- models ---------------------------------------------------------------------------------------


def load_mllm(source: str, dtype: str, seed: int) -> ThinkGenMLLM:
    """The frozen MLLM: a saved MLLM folder, a pipeline folder or shipped model (its MLLM), or ``tiny``
    (a tiny random Qwen3-VL, for tests and smoke runs)."""
    if source == "tiny":
        from thinkgen.models.tiny import build_tiny_mllm

        mllm = build_tiny_mllm(seed=seed)
        mllm.model.to(TORCH_DTYPES[dtype])
    else:
        mllm = ThinkGenMLLM.from_pretrained(*mllm_folders(source), torch_dtype=TORCH_DTYPES[dtype])
    mllm.model.requires_grad_(False).eval()
    return mllm


def build_transformer(config: SFTStageConfig, mllm: ThinkGenMLLM, codec: ImageCodec) -> ThinkGenTransformer2DModel:
    """Load the recipe's DiT, or make a new one (seeded by ``set_seed``), and check it fits MLLM and codec."""
    model_config = config.model
    if model_config.transformer:
        # float32 master weights, whatever the folder stores (a shipped model may be half precision)
        dit = load_transformer(model_config.transformer, torch.float32)
        if model_config.depth_multiplier > 1:
            dit = dit.deepened(model_config.depth_multiplier)
    else:
        kwargs = {"text_feat_dim": mllm.hidden_size, "in_channels": codec.latent_channels, **model_config.dit}
        try:
            dit = ThinkGenTransformer2DModel(**kwargs)
        except TypeError as err:
            raise ValueError(f"model.dit: {err}") from None
    cfg = dit.config
    if cfg.text_feat_dim != mllm.hidden_size:
        raise ValueError(f"the DiT reads MLLM width {cfg.text_feat_dim}, the MLLM has {mllm.hidden_size}")
    if cfg.in_channels != codec.latent_channels:
        raise ValueError(f"the DiT has {cfg.in_channels} input channels, the codec {codec.latent_channels}")
    cell = codec.downscale_factor * cfg.patch_size
    if config.data.size_multiple % cell:
        raise ValueError(
            f"data.size_multiple ({config.data.size_multiple}) must be a multiple of codec factor × patch "
            f"size ({codec.downscale_factor} × {cfg.patch_size} = {cell})"
        )
    return dit


def select_trainable(dit: ThinkGenTransformer2DModel, config: SFTStageConfig) -> torch.nn.Module:
    """Freeze what the stage keeps fixed; with LoRA, return the peft model around the DiT."""
    train = config.train
    if train.stage == "connector":
        # Stage 1 (Sec. 4.1): connector + prepadding align the MLLM's features; the DiT stays as it is.
        dit.requires_grad_(False)
        dit.time_caption_embed.caption_embedder.requires_grad_(True)
        dit.prepad_embed.requires_grad_(dit.prepad_embed.numel() > 0)
        return dit
    if train.lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha, target_modules=train.lora_target_modules)
        return get_peft_model(dit, lora)
    dit.requires_grad_(True)
    return dit


class EMA:
    """Exponential moving average of the trainable parameters, in float32 (a checkpoint piece).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n updates (as diffusers' EMAModel):
    with a fixed 0.999, a model trained from scratch for 1200 steps would export weights still 30 %
    random initialisation (0.999^1200); warmed up, the average follows the early weights, and its decay
    passes 0.99 after ~900 updates and reaches 0.999 after ~9000.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @property
    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, param in self.params.items():
            param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": dict(self.shadow), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shadow" not in state:  # written before the warm-up existed: an average long past it
            state = {"shadow": state, "num_updates": 1 << 30}
        for name in self.shadow:
            self.shadow[name].copy_(state["shadow"][name])
        self.num_updates = int(state["num_updates"])


# ---- conditioning -------------------------------------------------------------------------------------


class FeatureEncoder:
    """MLLM features of (caption, images) pairs, right-padded into a batch; optionally cached.

    A caption is encoded in the pseudo-CoT (no-think) template, or, given a thought ``(user prompt,
    reasoning)``, after that prompt and thought as a think-mode call has it (:meth:`ThinkGenMLLM.encode_thought`).

    Args:
        mllm: The frozen MLLM.
        max_cached: Cache entries (0: no cache). Features of a cached pair are reused as computed the
            first time, whichever batch that was in.
    """

    def __init__(self, mllm: ThinkGenMLLM, max_cached: int) -> None:
        self.mllm = mllm
        self.max_cached = max_cached
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @staticmethod
    def _key(prompt: str, images: list[Image.Image], thought: Thought | None) -> str:
        digest = hashlib.sha1(prompt.encode())
        if thought is not None:
            digest.update(b"\0thought\0" + "\0".join(thought).encode())
        for image in images:
            digest.update(f"{image.size}".encode())
            digest.update(image.tobytes())
        return digest.hexdigest()

    def _encode_rows(
        self, prompts: list[str], images: list[list[Image.Image]], thoughts: list[Thought | None], to_cpu: bool
    ) -> list[torch.Tensor]:
        """Per row, its states ``(n, 2D)``: one MLLM call per template, one copy off the device per call."""
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for with_thought in (False, True):
            picked = [i for i, t in enumerate(thoughts) if (t is not None) == with_thought]
            if not picked:
                continue
            if with_thought:
                out = self.mllm.encode_thought(
                    [thoughts[i][0] for i in picked], [thoughts[i][1] for i in picked],
                    [prompts[i] for i in picked], [images[i] for i in picked],
                )
            else:
                out = self.mllm.encode_prompt([prompts[i] for i in picked], [images[i] for i in picked], think=False)
            states = out.instruction_states.cpu() if to_cpu else out.instruction_states
            for i, row, n in zip(picked, states, out.instruction_mask.sum(dim=1).tolist()):
                rows[i] = row[:n]
        return rows

    def __call__(
        self, prompts: list[str], images: list[list[Image.Image]], thoughts: list[Thought | None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``states (B, L, 2D)`` and a right-padded bool ``mask (B, L)``."""
        thoughts = thoughts or [None] * len(prompts)
        if not self.max_cached:
            rows = self._encode_rows(prompts, images, thoughts, to_cpu=False)
        else:
            keys = [self._key(p, im, t) for p, im, t in zip(prompts, images, thoughts)]
            missing = [i for i, k in enumerate(keys) if k not in self.cache]
            if missing:
                encoded = self._encode_rows(
                    [prompts[i] for i in missing], [images[i] for i in missing], [thoughts[i] for i in missing],
                    to_cpu=True,
                )
                for i, row in zip(missing, encoded):
                    self.cache[keys[i]] = row.clone()  # its own storage: an entry must not keep its batch alive
                    if len(self.cache) > self.max_cached:
                        self.cache.popitem(last=False)
            rows = [self.cache[k] for k in keys]  # on the CPU: padded there, moved in one copy
        length = max(r.shape[0] for r in rows)
        states = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])  # (B, L, 2D)
        mask = torch.arange(length, device=states.device)[None] < torch.tensor(
            [r.shape[0] for r in rows], device=states.device
        )[:, None]
        return states.to(self.mllm.device), mask.to(self.mllm.device)


# ---- the flow-matching loss ---------------------------------------------------------------------------


def negative_text(negative_prompt: str) -> str:
    """The text encoded for the unconditional branch: an empty negative prompt is encoded as one space,
    as the pipeline does, so training and sampling feed the DiT the same features."""
    return negative_prompt or " "


def sample_time(generator: torch.Generator, config: SFTStageConfig, latent_size: tuple[int, int]) -> float:
    """One training time t ∈ (0, 1) (t = 1 data).

    Drawn logit-normal (SD3, Esser et al. 2024, Sec. 3.1: more weight on the middle of the path, where
    the velocity is hardest to predict) or uniform, then pushed through the same resolution-dependent
    shift ``t ← t / (m − m·t + t)``, ``m = sqrt(h·w)/40``, that :func:`~thinkgen.sampling.flow_timesteps`
    applies at inference. The shift is why: at higher resolution the same t leaves more of the image
    recognisable (neighbouring pixels are correlated, noise is not), so the sampler spends more steps near
    noise; training with the same shift puts the model's capacity where the sampler will query it, and
    keeps the train/test time distributions consistent across the resolutions of stages 1-3.
    """
    flow = config.flow
    if flow.time_distribution == "logit_normal":
        t = torch.sigmoid(flow.logit_mean + flow.logit_std * torch.randn((), generator=generator))
    else:
        t = torch.rand((), generator=generator)
    t = float(t)
    if flow.use_time_shift:
        m = time_shift_factor(*latent_size, flow.time_shift_reference_side)
        t = t / (m - m * t + t)
    return t


def training_item(
    record: Record,
    data: DataConfig,
    glyphs: bool = False,
    glyph_objects: bool = False,
    glyph_edits: bool = False,
    glyph_shapes: bool = False,
    glyph_move_colours: bool = False,
) -> dict[str, Any]:
    """A record as the loss reads it: caption, MLLM input images, target and references fitted to size.

    With ``glyphs``, a text-to-image record whose target shows words gets a glyph reference: those words
    alone at their own boxes (:mod:`thinkgen.glyphs`), a reference for the DiT only. With ``glyph_objects``
    too, the reference also marks the box of each target object, and every text-to-image record with
    objects gets one; ``unmarked_refs`` then holds the references without the marks (``flow.mark_dropout``).
    With ``glyph_edits``, an edit of one input image that changes something gets its edit marks as a second
    reference, and ``unmarked_refs`` holds the input image alone. ``glyph_shapes`` draws the objects of both
    kinds of marks as silhouettes of their shapes rather than boxes, and ``glyph_move_colours`` an object an
    edit moves in its own colour.

    Images stay PIL until the loss stacks them: a DataLoader worker hands a PIL image over as its bytes, a
    tensor as a shared-memory handle of its own, which costs far more (``benchmarks/sft_input_pipeline.py``).
    """

    def fit(image: Image.Image) -> Image.Image:
        return fit_image(image, data.max_image_pixels, data.size_multiple)

    use_answer = data.prompt_field == "answer" and record.answer
    references = list(record.input_images)
    unmarked = None  # the references without object marks, where they have some
    if glyphs and not references:
        width, height = record.output_image.size
        words = [render_glyphs(record.target_words, width, height, canvas_px=width)] if record.target_words else []
        if glyph_objects and record.target_objects:
            references = [render_glyphs(record.target_words, width, height, canvas_px=width,
                                        objects=record.target_objects, shapes=glyph_shapes)]
            unmarked = words
        else:
            references = words
    elif glyph_edits and len(references) == 1 and record.edit_marks:
        width, height = record.output_image.size
        unmarked = list(references)
        references.append(render_edit_marks(record.edit_marks, width, height, canvas_px=width, shapes=glyph_shapes,
                                            colours=glyph_move_colours))
    return {
        "prompt": record.answer if use_answer else record.instruction,
        "thought": (record.instruction, record.reasoning) if use_answer else None,
        "input_images": record.input_images,
        "target": fit(record.output_image),
        "refs": [fit(image) for image in references],
        "unmarked_refs": None if unmarked is None else [fit(image) for image in unmarked],
    }


@torch.no_grad()
def encode_references(
    refs: list[list[Image.Image]], codec: ImageCodec, device: torch.device
) -> list[list[torch.Tensor] | None]:
    """Per sample, the latents ``(C, h, w)`` of its reference images (``None`` without any): one codec call
    per image size, not one per image, which would leave an accelerator waiting on kernel launches."""
    latents: list[list[torch.Tensor] | None] = [[None] * len(images) if images else None for images in refs]
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, images in enumerate(refs):
        for j, image in enumerate(images):
            by_size.setdefault(image.size, []).append((i, j))
    for places in by_size.values():
        encoded = codec.encode(pil_to_tensor([refs[i][j] for i, j in places]).to(device)).float()
        for (i, j), latent in zip(places, encoded):
            latents[i][j] = latent
    return latents


def flow_matching_loss(
    model: torch.nn.Module,
    encoder: FeatureEncoder,
    codec: ImageCodec,
    items: list[dict[str, Any]],
    step: int,
    config: SFTStageConfig,
    device: torch.device,
) -> torch.Tensor:
    """Mean squared error between the DiT's velocity and ``x1 − x0`` on one micro-batch.

    ``x_t = t·x1 + (1 − t)·x0`` with x1 the target latents and x0 Gaussian noise (DESIGN.md "Time"). Each
    sample's noise, time and dropout come from its own generator (:func:`~thinkgen.train.run.item_seed`).
    """
    flow = config.flow
    # 1. Target latents (the codec's posterior mode: deterministic, and the FLUX posterior is narrow).
    pixels = pil_to_tensor([item["target"] for item in items]).to(device)  # (B, 3, H, W)
    with torch.no_grad():
        x1 = codec.encode(pixels).float()  # (B, C, h, w)
    latent_size = (x1.shape[-2], x1.shape[-1])

    # 2. Per-sample randomness, independent of how the global batch was split over processes.
    times, noises, drop_text, drop_refs, in_thought, drop_marks = [], [], [], [], [], []
    for item in items:
        generator = R.item_generator(config.run.seed, step, item["slot"])
        u_text, u_refs = torch.rand(2, generator=generator).tolist()
        drop_text.append(u_text < flow.prompt_dropout)
        drop_refs.append(u_refs < flow.ref_dropout)
        times.append(sample_time(generator, config, latent_size))
        noises.append(torch.randn(x1.shape[1:], generator=generator))
        # Drawn after the rest, each newer setting later, so no earlier draw depends on them.
        in_thought.append(bool(torch.rand((), generator=generator) < config.data.think_context))
        drop_marks.append(bool(torch.rand((), generator=generator) < flow.mark_dropout))
    t = torch.tensor(times, device=device)  # (B,)
    x0 = torch.stack(noises).to(device)  # (B, C, h, w)

    # 3. Conditions: dropped text becomes the negative prompt (no images), as the sampler's u / r branches.
    prompts = [negative_text(flow.negative_prompt) if drop else item["prompt"] for item, drop in zip(items, drop_text)]
    images = [[] if drop else item["input_images"] for item, drop in zip(items, drop_text)]
    thoughts = [item["thought"] if use and not drop else None for item, use, drop in zip(items, in_thought, drop_text)]
    text_states, text_mask = encoder(prompts, images, thoughts)
    refs = [item["unmarked_refs"] if unmark and item["unmarked_refs"] is not None else item["refs"]
            for item, unmark in zip(items, drop_marks)]
    refs = encode_references([[] if drop else r for r, drop in zip(refs, drop_refs)], codec, device)

    # 4. Velocity prediction on the interpolant.
    t_b = t[:, None, None, None]
    x_t = t_b * x1 + (1 - t_b) * x0
    velocity = model(
        hidden_states=x_t,
        timestep=t,
        text_hidden_states=text_states,
        text_attention_mask=text_mask,
        ref_image_hidden_states=refs if any(r is not None for r in refs) else None,
    ).sample
    if flow.ink_weight == 1.0:
        return F.mse_loss(velocity.float(), x1 - x0)
    ink = (pixels - pixels[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1  # (B, 1, H, W)
    ink = F.adaptive_max_pool2d(ink.float(), latent_size)  # (B, 1, h, w)
    weight = 1.0 + (flow.ink_weight - 1.0) * ink
    return ((velocity.float() - (x1 - x0)) ** 2 * weight).mean() / weight.mean()


# ---- samples at intervals --------------------------------------------------------------------------


@torch.no_grad()
def save_sample_grid(
    model: torch.nn.Module, encoder: FeatureEncoder, codec: ImageCodec, config: SFTStageConfig, step: int,
    device: torch.device, is_main: bool,
) -> None:
    """Draw the recipe's fixed prompts from fixed noise and save them side by side (PNG + JSON sidecar).

    Every process runs the sampler (under FSDP each forward is collective); the main process saves.
    The noise comes from its own generator, so sampling never moves the training RNG.
    """
    sample = config.sample
    prompts = list(sample.prompts)
    states, mask = encoder(prompts, [[] for _ in prompts])
    negatives = [negative_text(config.flow.negative_prompt)] * len(prompts)
    negative, negative_mask = encoder(negatives, [[] for _ in prompts])
    side = sample.image_size // codec.downscale_factor
    generator = torch.Generator().manual_seed(sample.seed)
    noise = torch.randn(len(prompts), codec.latent_channels, side, side, generator=generator).to(device)
    refs = None
    if config.model.glyph_preset:
        glyphs = [plan_glyphs(p, config.model.glyph_preset, sample.image_size, sample.image_size, sample.seed,
                              objects=config.model.glyph_objects, shapes=config.model.glyph_shapes) for p in prompts]
        refs = encode_references([[g] if g else [] for g in glyphs], codec, device)
    model.eval()
    latents = sample_latents(
        model, noise, states, mask, negative, negative_mask, refs,
        num_inference_steps=sample.num_inference_steps, guidance_scale=sample.guidance_scale,
        shift_reference_side=config.flow.time_shift_reference_side,
    )
    model.train()
    if not is_main:
        return
    images = tensor_to_pil(codec.decode(latents).cpu())
    grid = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    for i, image in enumerate(images):
        grid.paste(image, (i * image.width, 0))
    path = Path(config.run.output_dir) / "samples" / f"step_{step:08d}.png"
    save_with_sidecar(grid, path, {"step": step, "prompts": prompts, "seed": sample.seed,
                                   "num_inference_steps": sample.num_inference_steps,
                                   "guidance_scale": sample.guidance_scale})


# ---- export ---------------------------------------------------------------------------------------


def export_final(
    accelerator: Any, model: torch.nn.Module, dit: ThinkGenTransformer2DModel, ema: EMA | None,
    mllm: ThinkGenMLLM, codec: ImageCodec, config: SFTStageConfig, output_dir: Path,
) -> ThinkGenTransformer2DModel | None:
    """Write ``final/``: a whole pipeline folder (the DiT with EMA weights if on and LoRA merged, the codec,
    the frozen MLLM, and the recipe's sampling settings as defaults), so that ``thinkgen generate --model
    <output_dir>/final`` runs the stage's result. Returns the DiT (``None`` on processes but the main one)."""
    if ema is not None:
        ema.copy_to_model()
    # Full tensors whatever the wrapping (a collective under FSDP: every process takes part).
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "merge_and_unload"):  # LoRA (never sharded): fold the adapters into the weights
        final = unwrapped.merge_and_unload()
    else:
        final = ThinkGenTransformer2DModel.from_config(dit.config)
        final.load_state_dict(state, strict=True)
    final = final.to("cpu").eval()
    defaults = PipelineConfig(
        height=config.sample.image_size, width=config.sample.image_size,
        num_inference_steps=config.sample.num_inference_steps, guidance_scale=config.sample.guidance_scale,
        negative_prompt=config.flow.negative_prompt, max_image_pixels=config.data.max_image_pixels,
        time_shift_reference_side=config.flow.time_shift_reference_side,
        glyph_preset=config.model.glyph_preset or None, glyph_objects=config.model.glyph_objects,
        glyph_edits=config.model.glyph_edits, glyph_shapes=config.model.glyph_shapes,
        glyph_move_colours=config.model.glyph_move_colours,
    )
    ThinkGenPipeline(mllm, final, codec, defaults).save_pretrained(output_dir / "final")
    logger.info("wrote %s", output_dir / "final")
    return final


# ---- the loop -------------------------------------------------------------------------------------------


def train(config: SFTStageConfig) -> SFTResult:
    """Run (or resume) one DiT stage. See the module docstring for the commands.

    Args:
        config: The validated recipe (:func:`~thinkgen.train.config.load_recipe`).

    Returns:
        :class:`SFTResult`.

    Example:
        >>> from thinkgen.train.config import load_recipe
        >>> result = train(load_recipe("recipes/nano/stage2_dit.toml", ["run.max_steps=20"]))
    """
    # ---- compute init
    output_dir = Path(config.run.output_dir)
    accelerator = build_accelerator(
        config.distributed.strategy, config.train.mixed_precision, config.data.global_batch_size,
        config.data.micro_batch_size, ThinkGenTransformer2DModel._no_split_modules,
        find_unused_parameters=config.train.stage != "connector",
    )
    R.log_on_main_only(accelerator)
    device = accelerator.device
    set_seed(config.run.seed)

    # ---- data validation pass (before any model is built)
    sources = build_sources(config.data, config.run.seed, required=("instruction", "output_image"))
    R.write_config(output_dir, config, accelerator.is_main_process)

    # ---- models: frozen MLLM and codec, the DiT with the stage's trainable parts, its optimizer
    mllm = load_mllm(config.model.mllm, config.model.mllm_dtype, config.run.seed)
    mllm.model.to(device)
    codec = PixelCodec() if config.model.codec == "pixel" else load_codec(config.model.codec)
    # The codec's network, if it has one: the codec itself (nano autoencoder) or its AutoencoderKL.
    codec_module = codec if isinstance(codec, torch.nn.Module) else getattr(codec, "vae", None)
    if codec_module is not None:
        codec_module.requires_grad_(False).eval().to(device)
    dit = build_transformer(config, mllm, codec)
    mllm.caption_layers = dit.config.caption_layers
    trainable = select_trainable(dit, config)
    num_trainable = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    logger.info("stage %s: %.3fM of %.3fM DiT parameters train", config.train.stage, num_trainable / 1e6,
                sum(p.numel() for p in dit.parameters()) / 1e6)
    model, optimizer = wrap_model(accelerator, trainable, config.train.gradient_checkpointing, config.optim)
    # After wrap_model: the average lives on the device the parameters were moved to.
    ema = EMA(trainable, config.train.ema_decay) if config.train.ema_decay else None
    encoder = FeatureEncoder(mllm, config.train.max_cached_features if config.train.cache_features else 0)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)

    # ---- data: one size bucket per batch, each process loads its slice
    data = config.data

    def bucket_of(source: Source, index: int) -> str:
        width, height = fitted_size(*source.image_size(index), data.max_image_pixels, data.size_multiple)
        return f"{width}x{height}"

    to_item = functools.partial(training_item, data=data, glyphs=bool(config.model.glyph_preset),
                                glyph_objects=config.model.glyph_objects, glyph_edits=config.model.glyph_edits,
                                glyph_shapes=config.model.glyph_shapes,
                                glyph_move_colours=config.model.glyph_move_colours)
    planner, start_batches = R.make_batches(accelerator, data, sources, config.run.seed, bucket_of, to_item, True)

    # ---- checkpoints: resume exactly where the newest one left off
    train_state = ValueState(step=0, samples=0, broken=0)
    data_state = ValueState(**planner.state_dict())
    shared = {"model": TrainableWeights(model), "optimizer": OptimizerState(model, optimizer),
              "scheduler": scheduler, "data": data_state, "train_state": train_state}
    if ema is not None:
        shared["ema"] = ema
    per_process = {"rng": RNGState()}
    manager = R.checkpoint_manager(accelerator, config.run)
    step = R.resume(config.run, manager, shared, per_process)
    planner.load_state_dict(data_state.state_dict())
    batches, sampler = start_batches()
    metrics = MetricsLogger(output_dir, accelerator.is_main_process, config.run.use_tensorboard, step)
    progress = R.LoopProgress(step, config.run.max_steps, accelerator.is_main_process)

    # ---- the loop
    model.train()
    budget = R.TimeBudget(config.run.max_minutes)
    while step < config.run.max_steps:
        totals = R.accumulate_step(
            accelerator, model, batches, sampler.num_micro_steps,
            lambda items: flow_matching_loss(model, encoder, codec, items, step, config, device), budget,
        )
        grad_norm = R.optimizer_step(accelerator, model, optimizer, scheduler, config.optim.max_grad_norm)
        if ema is not None:
            ema.update()
        step += 1

        # The plan state of the batch just consumed (the loader may have planned further ahead).
        data_state.load_state_dict(sampler.states.popleft())
        state = train_state.state_dict()
        train_state.load_state_dict({"step": step, "samples": state["samples"] + totals.samples,
                                     "broken": state["broken"] + totals.broken})
        progress.advance(totals.mean_loss, totals.samples)

        last = step == config.run.max_steps or totals.out_of_time
        if step % config.run.log_every == 0 or last:
            metrics.log(step, {
                "loss": totals.mean_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "samples_per_s": progress.samples_per_s(), "samples": train_state.values["samples"],
                "skipped": train_state.values["broken"] + int(data_state.values["num_skipped"]),
            })
        if config.run.save_every and step % config.run.save_every == 0 or last:
            manager.save(step, shared, per_process)
        if config.run.sample_every and step % config.run.sample_every == 0:
            sampling_start = time.perf_counter()
            save_sample_grid(model, encoder, codec, config, step, device, accelerator.is_main_process)
            progress.exclude(time.perf_counter() - sampling_start)
        if totals.out_of_time:
            budget.report(step, config.run.max_steps)
            break

    # ---- cleanup
    progress.close()
    metrics.close()
    final = export_final(accelerator, model, dit, ema, mllm, codec, config, output_dir)
    accelerator.wait_for_everyone()
    return SFTResult(step=step, losses=progress.losses, transformer=final, model=model, output_dir=output_dir)
