"""``ThinkGenPipeline``: think → refine → draw.

The pipeline only wires components; each step is a named method:

1. check inputs;
2. the MLLM encodes the prompt (thinking, or the one-pass no-think template) and VGI-refine keeps the
   instruction span; the negative prompt goes through the no-think template;
3. reference images are encoded by the codec;
4. noise is drawn from the seed;
5. the DiT samples (guidance branches of equal sequence length share one DiT call);
6. the codec decodes.

Example:
    >>> pipe = ThinkGenPipeline.from_pretrained("path/to/model")
    >>> out = pipe("as many triangles as a tricycle has wheels, coloured like the sky", think=True, seed=0)
    >>> out.images[0].save("triangles.png"); print(out.reasoning[0], "→", out.instruction[0])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from PIL import Image
from safetensors.torch import load_file, save_file

from . import DTYPES
from .glyphs import plan_edit_glyphs, plan_glyphs
from .imageio import load_image, pil_to_tensor, tensor_to_pil
from .models.dit import ThinkGenTransformer2DModel
from .models.mllm import MLLMOutput, ThinkGenMLLM, ThinkingConfig
from .models.refine import is_match_verdict
from .models.vae import ImageCodec, load_codec
from .sampling import SHIFT_REFERENCE_SIDE, GuidanceBatching, check_guidance_batching, sample_latents
from .world.scene import get_preset

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}
# The default negative prompt of the released inference code.
RELEASED_NEGATIVE_PROMPT = (
    "(((deformed))), blurry, over saturation, bad anatomy, disfigured, poorly drawn face, mutation, mutated, "
    "(extra_limb), (ugly), (poorly drawn hands), fused fingers, messy drawing, broken legs censor, censored, "
    "censor_bar"
)
MAX_REFERENCE_IMAGES = 5
# Models that ship inside the package, by name.
SHIPPED_MODELS: dict[str, Path] = {"nano": Path(__file__).parent / "assets" / "thinkgen-nano"}
Think = bool | Literal["auto"]
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
ImageInput = Image.Image | str | Path


@dataclass
class PipelineConfig:
    """Defaults and limits of a pipeline, saved in ``model_index.json`` under ``"thinkgen"``.

    Attributes:
        height, width: output size when the call gives none and no single input image sets it.
        num_inference_steps, guidance_scale, image_guidance_scale, cfg_range: sampler defaults (the released
            code's: 50 steps, text 4.0, image 2.0, whole range).
        time_shift_reference_side: latent side at which the sampler's resolution-dependent time shift is 1
            (the released model: 40; a model trained at another scale keeps the reference it trained with).
        guidance_batching: how guidance branches share DiT calls (:func:`~thinkgen.sampling.guided_velocity`):
            ``"by_length"``, ``"all"``, or ``"none"`` (one call per branch, the least peak memory).
        negative_prompt: encoded through the no-think template for the unconditional branches.
        max_prompt_chars: longest prompt accepted.
        max_image_pixels: largest output (height·width) and largest input image after resizing.
        think_auto_threshold: ``think="auto"`` skips thinking where the MLLM's probability of closing its thought
            at once is at least this.
        reflection_template: how a reflection round asks the MLLM to check an image against ``{prompt}``.
        match_verdict: the instruction by which the MLLM says the image already matches.
        glyph_preset: the world preset whose layout rules and font draw a glyph reference of the texts an
            instruction quotes, given to the DiT as one more reference image in text-to-image calls
            (:mod:`thinkgen.glyphs`); ``None`` (the released model) draws none. Only for a DiT trained with
            glyph references.
        glyph_objects: glyph references also mark where each object the instruction names goes (light grey
            boxes of a layout planned by the preset's rules), so an instruction naming objects gets one too.
            Only for a DiT trained with object marks; needs ``glyph_preset``.
        glyph_edits: an edit of one input image gets its edit marks as a second reference (where something
            goes away, where an object goes, the words it writes; planned from the instruction and what the
            preset's detector sees in the image). Only for a DiT trained with edit marks; needs
            ``glyph_preset``.
        glyph_shapes: object marks and the objects edit marks draw are silhouettes of the shapes the
            instruction names, not boxes. Only for a DiT trained so; needs ``glyph_objects`` or ``glyph_edits``.
        glyph_move_colours: an object an edit moves is drawn in its edit marks in the colour the input image
            shows it in, not the mark grey. Only for a DiT trained so; needs ``glyph_edits`` and
            ``glyph_shapes``.
    """

    height: int = 1024
    width: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    image_guidance_scale: float = 2.0
    cfg_range: tuple[float, float] = (0.0, 1.0)
    time_shift_reference_side: float = SHIFT_REFERENCE_SIDE
    guidance_batching: GuidanceBatching = "by_length"
    negative_prompt: str = RELEASED_NEGATIVE_PROMPT
    max_prompt_chars: int = 4000
    max_image_pixels: int = 2048 * 2048
    think_auto_threshold: float = 0.5
    reflection_template: str = "The prompt was: {prompt}. Does the image match? If not, give an edit that fixes it."
    match_verdict: str = "The image already matches the prompt."
    glyph_preset: str | None = None
    glyph_objects: bool = False
    glyph_edits: bool = False
    glyph_shapes: bool = False
    glyph_move_colours: bool = False

    def __post_init__(self) -> None:
        self.cfg_range = tuple(self.cfg_range)  # JSON gives a list
        if self.time_shift_reference_side <= 0:
            raise ValueError(f"time_shift_reference_side must be > 0, got {self.time_shift_reference_side}")
        check_guidance_batching(self.guidance_batching)
        if "{prompt}" not in self.reflection_template:
            raise ValueError("reflection_template must contain '{prompt}'")
        if self.glyph_preset is not None:
            get_preset(self.glyph_preset)
        if self.glyph_objects and self.glyph_preset is None:
            raise ValueError("glyph_objects marks objects in glyph references: set glyph_preset too")
        if self.glyph_edits and self.glyph_preset is None:
            raise ValueError("glyph_edits draws edit marks by a world's rules: set glyph_preset too")
        if self.glyph_shapes and not (self.glyph_objects or self.glyph_edits):
            raise ValueError("glyph_shapes draws object and edit marks as silhouettes: set glyph_objects or "
                             "glyph_edits too")
        if self.glyph_move_colours and not (self.glyph_edits and self.glyph_shapes):
            raise ValueError("glyph_move_colours draws moved objects' silhouettes in their colour: set glyph_edits "
                             "and glyph_shapes too")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown pipeline setting(s) {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**data)


@dataclass
class ThinkGenPipelineOutput:
    """What a call returns.

    Attributes:
        images: ``num_images_per_prompt`` images per prompt, prompt-major (PIL, or a ``(N, 3, H, W)`` tensor in
            [-1, 1] with ``output_type="pt"``, or latents with ``output_type="latent"``).
        reasoning: per prompt, the text inside the thought ("" without thinking).
        instruction: per prompt, the instruction the DiT drew from (the prompt itself without thinking).
        thought: per prompt, whether the MLLM thought (matters for ``think="auto"``).
        timings: seconds spent ``thinking`` (all MLLM work), ``denoising`` and ``decode``.
        token_counts: ``generated`` tokens, ``instruction`` tokens (summed over prompts) and MLLM
            ``forward_calls``.
        glyphs: per prompt, the glyph reference or edit marks the DiT read (``None`` where it read none).
    """

    images: list[Image.Image] | torch.Tensor
    reasoning: list[str]
    instruction: list[str]
    thought: list[bool]
    timings: dict[str, float] = field(default_factory=dict)
    token_counts: dict[str, int] = field(default_factory=dict)
    glyphs: list[Image.Image | None] = field(default_factory=list)


@dataclass
class ReflectionRound:
    """One round of :meth:`ThinkGenPipeline.reflect`: the image, and the MLLM's verdict on it."""

    image: Image.Image
    critique: str
    instruction: str
    matches: bool


@dataclass
class ReflectionOutput:
    """Every round of a reflection; ``image`` is the last one drawn."""

    rounds: list[ReflectionRound]

    @property
    def image(self) -> Image.Image:
        return self.rounds[-1].image


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is out of range; allowed: {low} to {high}")


def load_transformer(path: str | Path, torch_dtype: torch.dtype | None = None) -> ThinkGenTransformer2DModel:
    """Load a DiT folder strictly: every weight present and of the right shape, nothing extra.

    The model is built on the meta device and the weights are assigned, so a 4B model never exists twice.
    ``torch_dtype`` casts the floating-point weights (``None``: as stored).
    """
    path = Path(path)
    config = ThinkGenTransformer2DModel.load_config(path)
    index = path / f"{DIT_WEIGHTS}.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [DIT_WEIGHTS]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"missing DiT weights file {path / name}")
        state.update(load_file(path / name))
    with torch.device("meta"):
        model = ThinkGenTransformer2DModel.from_config(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"DiT weights in {path} do not match its config: missing {missing[:8]}{'…' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}, wrong shape {wrong[:8]}"
        )
    if torch_dtype is not None:
        state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_transformer(
    model: ThinkGenTransformer2DModel, path: str | Path, dtype: torch.dtype | None = None,
    max_shard_size: str = "10GB",
) -> None:
    """Write the DiT folder :func:`load_transformer` reads: ``config.json`` and safetensors shards (with an
    index when there are several), floating-point weights cast to ``dtype`` (``None``: as they are). The
    model itself is not changed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_config(path)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous()
        for k, v in model.state_dict().items()
    }
    pattern = DIT_WEIGHTS.replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
    for old in [*path.glob(pattern.format(suffix="*")), path / f"{DIT_WEIGHTS}.index.json"]:
        old.unlink(missing_ok=True)  # a re-save with another sharding must not leave stale shards behind
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, path / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (path / f"{DIT_WEIGHTS}.index.json").write_text(json.dumps(index, indent=2) + "\n")


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A shipped model's name (see :data:`SHIPPED_MODELS`) or a model folder → the folder, checked."""
    if str(name_or_path) in SHIPPED_MODELS:
        path = SHIPPED_MODELS[str(name_or_path)]
        if not (path / MODEL_INDEX).is_file():
            raise FileNotFoundError(
                f"the shipped model {name_or_path!r} is not installed in this build; pass a model folder instead"
            )
        return path
    path = Path(name_or_path)
    if not (path / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"{path} is not a ThinkGen model folder (no {MODEL_INDEX}); shipped models: {', '.join(SHIPPED_MODELS)}"
        )
    return path


def is_pipeline(source: str | Path) -> bool:
    """Whether ``source`` names a whole pipeline: a shipped model's name or a folder with a model index."""
    return str(source) in SHIPPED_MODELS or (Path(source) / MODEL_INDEX).is_file()


def mllm_folders(source: str | Path) -> tuple[Path, Path]:
    """Where an MLLM's weights and its processor are, as ``(weights, processor)``: a shipped model's name or a
    pipeline folder gives its ``mllm`` and ``processor`` folders; any other folder is an MLLM saved with its
    processor (``ThinkGenMLLM.save_pretrained``, a trainer's ``final/mllm``)."""
    if is_pipeline(source):
        folder = resolve_model_path(source)
        return folder / "mllm", folder / "processor"
    return Path(source), Path(source)


def load_pipeline(model: str | Path = "nano", device: str | None = None, dtype: str = "float32") -> ThinkGenPipeline:
    """The command lines' loader: ``model`` (a shipped model's name or a folder) on ``device`` (default: cuda if
    available, else cpu), its weights in ``dtype`` (a name of :data:`TORCH_DTYPES`)."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not allowed; allowed: {', '.join(TORCH_DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ThinkGenPipeline.from_pretrained(model, torch_dtype=TORCH_DTYPES[dtype], device=device)


class ThinkGenPipeline:
    """The decoupled MLLM + DiT model of ThinkGen, for every scenario.

    Args:
        mllm: the thinking MLLM with its processor.
        transformer: the DiT.
        codec: image ↔ latent codec (FLUX's ``AutoencoderKL`` at full scale, or a small one for nano).
        config: defaults and limits.
    """

    def __init__(
        self,
        mllm: ThinkGenMLLM,
        transformer: ThinkGenTransformer2DModel,
        codec: ImageCodec,
        config: PipelineConfig | None = None,
    ) -> None:
        self.mllm = mllm
        self.transformer = transformer
        self.codec = codec
        self.config = config or PipelineConfig()
        if mllm.hidden_size != transformer.config.text_feat_dim:
            raise ValueError(
                f"the MLLM's hidden size {mllm.hidden_size} does not match the DiT's text_feat_dim "
                f"{transformer.config.text_feat_dim}"
            )
        if codec.latent_channels != transformer.config.in_channels:
            raise ValueError(
                f"the codec's {codec.latent_channels} latent channels do not match the DiT's in_channels "
                f"{transformer.config.in_channels}"
            )
        mllm.caption_layers = transformer.config.caption_layers

    # ---- loading and saving -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | Path, torch_dtype: torch.dtype = torch.float32, device: str | torch.device | None = None
    ) -> ThinkGenPipeline:
        """Load a pipeline folder (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``, ``mllm/``,
        ``processor/``): the released ThinkGen layout and ours. Every part must be there and complete.

        The weights are loaded in ``torch_dtype`` whatever they are stored in: float32 by default (half-
        precision folders are upcast); pass ``torch.bfloat16`` to run the full-size model on a GPU.
        """
        path = resolve_model_path(path)
        for part in ("transformer", "vae", "mllm", "processor"):
            if not (path / part).is_dir():
                raise FileNotFoundError(f"model folder {path} has no {part}/ part")
        index = json.loads((path / MODEL_INDEX).read_text())
        config = PipelineConfig.from_dict(index.get("thinkgen", {}))
        mllm = ThinkGenMLLM.from_pretrained(path / "mllm", path / "processor", torch_dtype=torch_dtype, device=device)
        transformer = load_transformer(path / "transformer", torch_dtype)
        codec = load_codec(path / "vae", torch_dtype)
        if device is not None:
            transformer.to(device)
            if hasattr(codec, "vae"):
                codec.vae.to(device)
        return cls(mllm, transformer, codec, config)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write the pipeline folder that :meth:`from_pretrained` reads, weights as safetensors.

        ``dtype`` stores the DiT's and the MLLM's floating-point weights in that dtype (``torch.float16``
        halves a float32 folder); ``None`` keeps them as they are. The codec keeps its own dtype: it is
        small, and VAE decoders are the part most sensitive to half precision. The models in memory are
        not changed.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_transformer(self.transformer, path / "transformer", dtype)
        self.codec.save_pretrained(path / "vae")
        self.mllm.save_pretrained(path / "mllm", path / "processor", dtype=dtype)
        (path / "scheduler").mkdir(exist_ok=True)
        (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
        index = {
            "_class_name": "ThinkGenPipeline",
            "transformer": ["thinkgen", "ThinkGenTransformer2DModel"],
            "vae": ["thinkgen", type(self.codec).__name__],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "mllm": ["transformers", "Qwen3VLForConditionalGeneration"],
            "processor": ["transformers", "Qwen3VLProcessor"],
            "thinkgen": dataclasses.asdict(self.config),
        }
        (path / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        # diffusers records the folder a part was loaded from; that is a fact of this machine, not of the model.
        for config_file in path.glob("*/config.json"):
            config = json.loads(config_file.read_text())
            if config.pop("_name_or_path", None) is not None:
                config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def load_lora_weights(self, path: str | Path, adapter_name: str = "default") -> None:
        """Load a PEFT LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) into the DiT."""
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

        path = Path(path)
        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no LoRA weights at {weights} (only safetensors adapters are loaded)")
        lora_config = LoraConfig.from_pretrained(str(path))
        inject_adapter_in_model(lora_config, self.transformer, adapter_name=adapter_name)
        result = set_peft_model_state_dict(self.transformer, load_file(weights), adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"LoRA adapter {path} has weights the DiT does not: {unexpected[:8]}")

    # ---- 1. inputs --------------------------------------------------------------------------------------

    def _size_multiple(self) -> int:
        return self.codec.downscale_factor * self.transformer.config.patch_size

    def _check_inputs(
        self,
        prompts: list[str],
        images: list[list[Image.Image]],
        height: int,
        width: int,
        num_images_per_prompt: int,
        num_inference_steps: int,
        guidance_scale: float,
        image_guidance_scale: float,
        cfg_range: tuple[float, float],
        think: Think,
    ) -> None:
        for prompt in prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError("prompt must be a non-empty string")
            if len(prompt) > self.config.max_prompt_chars:
                raise ValueError(
                    f"prompt is {len(prompt)} characters long; the limit is {self.config.max_prompt_chars}"
                )
        for row in images:
            if len(row) > MAX_REFERENCE_IMAGES:
                raise ValueError(f"{len(row)} input images given; at most {MAX_REFERENCE_IMAGES} are allowed")
        multiple = self._size_multiple()
        for name, value in (("height", height), ("width", width)):
            if value < multiple or value % multiple:
                raise ValueError(f"{name}={value} is not allowed; it must be a positive multiple of {multiple}")
        if height * width > self.config.max_image_pixels:
            raise ValueError(
                f"{width}x{height} is {width * height} pixels; the limit is {self.config.max_image_pixels}"
            )
        _check_range("num_images_per_prompt", num_images_per_prompt, 1, 64)
        _check_range("num_inference_steps", num_inference_steps, 1, 1000)
        _check_range("guidance_scale", guidance_scale, 0.0, 30.0)
        _check_range("image_guidance_scale", image_guidance_scale, 0.0, 30.0)
        if len(cfg_range) != 2 or not 0.0 <= cfg_range[0] <= cfg_range[1] <= 1.0:
            raise ValueError(f"cfg_range={cfg_range} must be (start, end) with 0 <= start <= end <= 1")
        if think not in (True, False, "auto"):
            raise ValueError(f"think={think!r} is not allowed; use True, False or 'auto'")

    def _normalize_images(
        self, images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None, num_prompts: int
    ) -> list[list[Image.Image]]:
        if images is None or len(images) == 0:
            return [[] for _ in range(num_prompts)]
        nested = isinstance(images[0], (list, tuple))
        rows = [list(r) for r in images] if nested else [list(images)]
        if len(rows) != num_prompts:
            raise ValueError(f"{len(rows)} lists of input images given for {num_prompts} prompts")
        limit = self.config.max_image_pixels * 4  # inputs are resized down, but not from anything at all
        return [[load_image(im, max_pixels=limit) for im in row] for row in rows]

    # ---- 2. prompt encoding -----------------------------------------------------------------------------

    def _decide_thinking(self, prompts: list[str], images: list[list[Image.Image]], think: Think) -> list[bool]:
        if think != "auto":
            return [bool(think)] * len(prompts)
        p_close = self.mllm.think_end_probability(prompts, images)
        return [bool(p < self.config.think_auto_threshold) for p in p_close.tolist()]

    def encode_prompt(
        self,
        prompts: list[str],
        images: list[list[Image.Image]],
        thinks: list[bool],
        thinking: ThinkingConfig | None = None,
        streamer: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str], dict[str, int]]:
        """Instruction states of each prompt, thinking where ``thinks`` says so.

        Returns:
            states ``(B, L, 2·D)``, mask ``(B, L)`` bool, reasoning and instruction texts, token counts.
        """
        outputs: dict[bool, tuple[list[int], MLLMOutput]] = {}
        for mode in (True, False):
            rows = [i for i, t in enumerate(thinks) if t == mode]
            if rows:
                out = self.mllm.encode_prompt(
                    [prompts[i] for i in rows],
                    [images[i] for i in rows],
                    think=mode,
                    thinking=thinking,
                    streamer=streamer if mode and len(rows) == 1 else None,
                )
                outputs[mode] = (rows, out)
        length = max(out.instruction_states.shape[1] for _, out in outputs.values())
        width = next(iter(outputs.values()))[1].instruction_states.shape[-1]
        states = torch.zeros(len(prompts), length, width, device=self.device)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=self.device)
        reasoning, instruction = [""] * len(prompts), list(prompts)
        counts = {"generated": 0, "instruction": 0, "forward_calls": 0}
        for mode, (rows, out) in outputs.items():
            n = out.instruction_states.shape[1]
            states[rows, :n] = out.instruction_states.to(states)
            mask[rows, :n] = out.instruction_mask.to(self.device)
            counts["forward_calls"] += out.num_forward_calls
            counts["instruction"] += int(out.instruction_mask.sum())
            counts["generated"] += sum(len(ids) for ids in out.generated_ids)
            if mode:
                for k, i in enumerate(rows):
                    reasoning[i], instruction[i] = out.reasoning[k].strip(), out.instruction[k].strip()
        return states, mask, reasoning, instruction, counts

    def encode_negative(self, negative_prompt: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``(batch, L, 2·D)`` and mask ``(batch, L)`` of the negative prompt, for the CFG branches."""
        # The released pipeline encodes the negative prompt through the no-think template, without images.
        out = self.mllm.encode_prompt([negative_prompt or " "], think=False)
        states = out.instruction_states.to(self.device).expand(batch, -1, -1)
        return states, out.instruction_mask.to(self.device).expand(batch, -1)

    # ---- 3. reference images ----------------------------------------------------------------------------

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """The nearest allowed size to ``width`` × ``height`` within the pixel limit, keeping the aspect."""
        multiple = self._size_multiple()
        scale = min(1.0, (self.config.max_image_pixels / (width * height)) ** 0.5)
        fit = lambda v: max(multiple, int(v * scale) // multiple * multiple)  # noqa: E731
        return fit(width), fit(height)

    def encode_references(self, images: list[list[Image.Image]]) -> list[list[torch.Tensor] | None]:
        """Per prompt, the codec latents ``(C, h, w)`` of its input images (each fitted to an allowed size), or
        ``None`` without images."""
        refs: list[list[torch.Tensor] | None] = []
        for row in images:
            if not row:
                refs.append(None)
                continue
            latents = []
            for image in row:
                size = self.fit_size(*image.size)
                pixels = pil_to_tensor([image.resize(size, Image.BICUBIC) if image.size != size else image])
                latents.append(self.codec.encode(pixels.to(self.device))[0].float())  # (C, h, w)
            refs.append(latents)
        return refs

    def glyph_reference(
        self, instruction: str, width: int, height: int, seed: str | int | None
    ) -> Image.Image | None:
        """The glyph reference of a text-to-image call drawing ``instruction`` at ``width`` × ``height``
        (:func:`thinkgen.glyphs.plan_glyphs`; ``seed`` fixes its layout), or ``None`` when the config names no
        glyph preset or the instruction quotes nothing drawable."""
        if self.config.glyph_preset is None:
            return None
        return plan_glyphs(instruction, self.config.glyph_preset, width, height, seed,
                           objects=self.config.glyph_objects, shapes=self.config.glyph_shapes)

    def dit_references(
        self, images: Sequence[Image.Image], instruction: str, width: int, height: int, seed: str | int | None
    ) -> list[Image.Image]:
        """What the DiT reads beside the text of one prompt: its input images (and, for an edit of one image
        where the config says ``glyph_edits``, the edit's marks), else (text-to-image) the glyph reference of
        ``instruction`` where the model uses them (:meth:`glyph_reference`), else nothing."""
        if images:
            if not (self.config.glyph_edits and len(images) == 1):
                return list(images)
            marks = plan_edit_glyphs(instruction, images[0], self.config.glyph_preset, width, height, seed,
                                     self.config.glyph_shapes, self.config.glyph_move_colours)
            return [images[0], marks] if marks else list(images)
        glyph = self.glyph_reference(instruction, width, height, seed)
        return [glyph] if glyph else []

    # ---- the call ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
        think: Think = False,
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        cfg_range: tuple[float, float] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        thinking: ThinkingConfig | None = None,
        output_type: Literal["pil", "pt", "latent"] = "pil",
        streamer: Any = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        glyphs: bool = True,
    ) -> ThinkGenPipelineOutput:
        """Generate images: text-to-image, text rendering, editing (one input image), in-context generation
        (2–5 input images), and reasoning generation or editing (``think=True``).

        Args:
            prompt: a prompt or a list of prompts.
            images: input images (PIL or paths): a list for one prompt, or one list per prompt; at most 5 each.
            think: ``True`` reasons first, ``False`` encodes the prompt in one pass (pseudo-CoT template),
                ``"auto"`` lets the MLLM decide per prompt (see :meth:`ThinkGenMLLM.think_end_probability`).
            negative_prompt: for the unconditional branches (default: the config's).
            num_images_per_prompt: images per prompt (1).
            height, width: output size, multiples of the codec factor × patch size. Default: the size of a
                single input image, else the config's.
            num_inference_steps, guidance_scale, image_guidance_scale, cfg_range: sampler settings
                (default: the config's). Guidance scales ≤ 1 switch that guidance off.
            seed: makes noise and thinking reproducible (the same call gives the same images and text).
            generator: a CPU ``torch.Generator`` for the noise, instead of ``seed``.
            latents: initial noise ``(B·n, C, h, w)`` instead of drawing it.
            prompt_embeds: instruction states ``(B, L, 2·D)`` from an earlier MLLM pass, with
                ``prompt_attention_mask`` ``(B, L)``; the MLLM is then not run for the prompt.
            thinking: thinking controls (temperature, top-p, top-k, budgets); its seed defaults to ``seed``.
            output_type: ``"pil"``, ``"pt"`` (tensor in [-1, 1]) or ``"latent"``.
            streamer: receives the MLLM's tokens as they are generated (one thinking prompt).
            callback: ``callback(step, latents)`` after each denoising step.
            glyphs: give the DiT a glyph reference of the instruction's quoted texts (and, where the config
                says ``glyph_objects``, of its objects) in text-to-image calls, and edit marks in edits where
                it says ``glyph_edits``, where the config names a glyph preset (``False`` draws from the text
                and input images alone); layouts are seeded like thinking (``seed``, else ``thinking.seed``).

        Returns:
            :class:`ThinkGenPipelineOutput`.
        """
        cfg = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must not be empty")
        image_rows = self._normalize_images(images, len(prompts))
        if height is None and width is None and len(image_rows[0]) == 1 and all(len(r) == 1 for r in image_rows):
            # An edit keeps the input's size, as the released pipeline does.
            width, height = self.fit_size(*image_rows[0][0].size)
        height = cfg.height if height is None else height
        width = cfg.width if width is None else width
        steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        text_scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        image_scale = cfg.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        cfg_range = tuple(cfg.cfg_range if cfg_range is None else cfg_range)

        # 1. Check inputs
        self._check_inputs(
            prompts, image_rows, height, width, num_images_per_prompt, steps, text_scale, image_scale, cfg_range,
            think,
        )
        if seed is not None and generator is None:
            generator = torch.Generator().manual_seed(seed)
        if thinking is None:
            thinking = ThinkingConfig(seed=seed)
        elif thinking.seed is None and seed is not None:
            thinking = dataclasses.replace(thinking, seed=seed)

        # 2. Encode the prompt (thinking where asked) and the negative prompt
        start = time.perf_counter()
        if prompt_embeds is not None:
            if prompt_attention_mask is None or prompt_embeds.shape[0] != len(prompts):
                raise ValueError("prompt_embeds needs one row per prompt and a prompt_attention_mask")
            thinks, reasoning, instruction = [False] * len(prompts), [""] * len(prompts), list(prompts)
            states, mask = prompt_embeds.to(self.device), prompt_attention_mask.to(self.device, torch.bool)
            counts = {"generated": 0, "instruction": int(mask.sum()), "forward_calls": 0}
        else:
            thinks = self._decide_thinking(prompts, image_rows, think)
            states, mask, reasoning, instruction, counts = self.encode_prompt(
                prompts, image_rows, thinks, thinking, streamer
            )
        n = num_images_per_prompt
        states, mask = states.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        batch = states.shape[0]
        neg_states = neg_mask = None
        if text_scale > 1.0:
            neg_states, neg_mask = self.encode_negative(
                cfg.negative_prompt if negative_prompt is None else negative_prompt, batch
            )
        thinking_s = time.perf_counter() - start

        # 3.–6. Encode references (the input images and their edit marks, else a glyph reference), draw noise,
        # denoise, decode
        layout_seeds = [None if thinking.seed is None else f"{thinking.seed}:{i}" for i in range(len(prompts))]
        reference_rows = [
            self.dit_references(row, text, width, height, layout_seed) if glyphs else row
            for row, text, layout_seed in zip(image_rows, instruction, layout_seeds)
        ]
        glyph_images = [refs[len(row)] if len(refs) > len(row) else None
                        for row, refs in zip(image_rows, reference_rows)]
        result, denoising_s, decode_s = self._draw(
            states, mask, neg_states, neg_mask, reference_rows, n, height, width, steps, text_scale, image_scale,
            cfg_range, generator, latents, output_type, callback,
        )
        return ThinkGenPipelineOutput(
            images=result,
            reasoning=reasoning,
            instruction=instruction,
            thought=thinks,
            timings={"thinking": thinking_s, "denoising": denoising_s, "decode": decode_s},
            token_counts=counts,
            glyphs=glyph_images,
        )

    def _draw(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        neg_states: torch.Tensor | None,
        neg_mask: torch.Tensor | None,
        image_rows: list[list[Image.Image]],
        n: int,
        height: int,
        width: int,
        steps: int,
        text_scale: float,
        image_scale: float,
        cfg_range: tuple[float, float],
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
        output_type: str,
        callback: Callable[[int, torch.Tensor], None] | None,
    ) -> tuple[list[Image.Image] | torch.Tensor, float, float]:
        """Steps 3–6 of a call, from instruction states (already repeated ``n`` times per prompt) to images."""
        batch = states.shape[0]
        # 3. Encode reference images
        refs = self.encode_references(image_rows)
        refs = [r for r in refs for _ in range(n)]

        # 4. Prepare latents
        factor = self.codec.downscale_factor
        shape = (batch, self.codec.latent_channels, height // factor, width // factor)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)  # on the CPU: same on any device
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape}")
        latents = latents.to(self.device, torch.float32)

        # 5. Denoise
        start = time.perf_counter()
        dtype = next(self.transformer.parameters()).dtype
        latents = sample_latents(
            self.transformer,
            latents,
            states.to(dtype),
            mask,
            None if neg_states is None else neg_states.to(dtype),
            neg_mask,
            refs if any(r for r in refs) else None,
            num_inference_steps=steps,
            guidance_scale=text_scale,
            image_guidance_scale=image_scale,
            cfg_range=cfg_range,
            guidance_batching=self.config.guidance_batching,
            callback=callback,
            shift_reference_side=self.config.time_shift_reference_side,
        )
        denoising_s = time.perf_counter() - start

        # 6. Decode
        start = time.perf_counter()
        if output_type == "latent":
            result: list[Image.Image] | torch.Tensor = latents
        else:
            pixels = self.codec.decode(latents)
            result = pixels if output_type == "pt" else tensor_to_pil(pixels)
        decode_s = time.perf_counter() - start
        return result, denoising_s, decode_s

    # ---- edit, reflect, understand ----------------------------------------------------------------------

    def edit(self, image: ImageInput, instruction: str, **kwargs: Any) -> ThinkGenPipelineOutput:
        """Edit one image by an instruction (``__call__`` with one input image)."""
        return self(instruction, images=[image], **kwargs)

    def is_match_verdict(self, instruction: str) -> bool:
        """Whether an instruction is the MLLM's verdict that the image already matches the prompt."""
        return is_match_verdict(instruction, self.config.match_verdict)

    def reflect(
        self,
        prompt: str,
        rounds: int = 2,
        think: Think = False,
        seed: int | None = None,
        thinking: ThinkingConfig | None = None,
        **kwargs: Any,
    ) -> ReflectionOutput:
        """Generate, then let the MLLM check the image against the prompt and fix it, up to ``rounds`` times.

        Each round is one thinking pass of the MLLM over the latest image and
        ``config.reflection_template``: its instruction is either the match verdict (stop, nothing is drawn)
        or a corrective edit, which the DiT applies to the image from the states of that same pass.

        Args:
            prompt: the original prompt.
            rounds: reflection rounds after the first image (0 to 8).
            think: thinking for the first generation.
            seed: seeds every round (round ``k`` uses ``seed + k``).
            thinking: thinking controls of the critique passes.
            kwargs: further ``__call__`` arguments for every drawing (steps, guidance, size …).

        Returns:
            :class:`ReflectionOutput`: round 0 is the first image; every later round holds the critique and
            edit that produced its image. The last round's ``matches`` says whether the MLLM accepted it.
        """
        _check_range("rounds", rounds, 0, 8)
        first = self(prompt, think=think, seed=seed, thinking=thinking, **kwargs)
        history = [ReflectionRound(first.images[0], first.reasoning[0], first.instruction[0], False)]
        question = self.config.reflection_template.format(prompt=prompt)
        for k in range(1, rounds + 1):
            round_seed = None if seed is None else seed + k
            critique_thinking = dataclasses.replace(thinking or ThinkingConfig(), seed=round_seed)
            image = history[-1].image
            states, mask, reasoning, instruction, _ = self.encode_prompt([question], [[image]], [True], critique_thinking)
            if self.is_match_verdict(instruction[0]):
                history[-1].matches = True
                break
            edited = self(
                question, images=[image], seed=round_seed, prompt_embeds=states, prompt_attention_mask=mask, **kwargs
            )
            history.append(ReflectionRound(edited.images[0], reasoning[0], instruction[0], False))
        return ReflectionOutput(history)

    def understand(self, images: Sequence[ImageInput], question: str, thinking: ThinkingConfig | None = None) -> str:
        """The MLLM's own image understanding: answer ``question`` about ``images``."""
        rows = self._normalize_images(list(images), 1) if images else [[]]
        if not question.strip():
            raise ValueError("question must be a non-empty string")
        return self.mllm.understand(rows[0], question, thinking)
