"""Tiny Qwen3-VL builder: a few-layer MLLM, tokenizer and processor made offline, for tests and the nano model.

Everything is built from scratch (no download) and saves in Hugging Face format, so ``from_pretrained`` on the
saved folder gives the same model, tokenizer and processor back:

- tokenizer: byte-level BPE (like Qwen's) trained with the ``tokenizers`` library on a small corpus, so the
  corpus' words are single tokens and any other text falls back to bytes; it carries the Qwen special tokens
  and a Qwen-style chat template;
- processor: :class:`~thinkgen.models.mllm.Qwen3VLImageProcessor` with Qwen2-VL's image processor, patch size
  and merge size matching the tiny vision tower;
- model: ``Qwen3VLForConditionalGeneration`` with a tiny text model and vision tower (deepstack included).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from thinkgen.models.mllm import CHAT_TOKENS, Qwen3VLImageProcessor, ThinkGenMLLM

# Qwen's special tokens, in Qwen's order (the first is its padding token).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    CHAT_TOKENS.im_start,
    CHAT_TOKENS.im_end,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    CHAT_TOKENS.vision_start,
    CHAT_TOKENS.vision_end,
    "<|vision_pad|>",
    CHAT_TOKENS.image_pad,
    "<|video_pad|>",
    CHAT_TOKENS.think_start,
    CHAT_TOKENS.think_end,
)

# Qwen-style chat template: string content or a list of {"type": "image"} / {"type": "text"} parts; the
# generation prompt opens the assistant turn with "<think>\n" as Qwen3-VL-Thinking does.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)

# Words of the synthetic world's prompts; callers with their own vocabulary pass it as `corpus`.
DEFAULT_CORPUS: tuple[str, ...] = (
    "draw a red green blue yellow purple orange black white gray circle square triangle star",
    "one two three four five six seven eight nine ten small big large left right above below",
    "of on in the and with next to an image picture make change remove add move it is are there",
    "what color how many which where sky grass sun tricycle wheels think answer because so",
)


@dataclass(frozen=True)
class TinyQwen3VLSpec:
    """Sizes of the tiny Qwen3-VL (defaults: ~0.3M parameters, a CPU forward in milliseconds).

    Attributes:
        hidden_size (`int`): text width D (the conditioning states have width 2*D).
        num_hidden_layers (`int`): text decoder layers (>= 2: ThinkGen reads the second-to-last).
        num_attention_heads / num_key_value_heads / head_dim (`int`): text attention shape.
        intermediate_size (`int`): text SwiGLU width.
        vision_depth / vision_hidden_size / vision_num_heads / vision_intermediate_size (`int`): vision tower.
        patch_size (`int`): vision patch side in pixels; merge_size x merge_size patches make one token.
        merge_size (`int`): spatial merge of the vision tower (and the image processor).
        temporal_patch_size (`int`): frames per patch (images are repeated to fill it).
        num_position_embeddings (`int`): learned vision positions (a square number).
        deepstack_visual_indexes (`tuple[int, ...]`): vision layers whose features are added to the first text
            layers.
        vocab_size (`int`): target BPE vocabulary, special tokens included.
        max_image_pixels / min_image_pixels (`int`): the image processor's default pixel bounds.
        rope_theta (`float`): text RoPE base.
    """

    hidden_size: int = 64
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_num_heads: int = 2
    vision_intermediate_size: int = 64
    patch_size: int = 8
    merge_size: int = 2
    temporal_patch_size: int = 2
    num_position_embeddings: int = 64
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    vocab_size: int = 512
    max_image_pixels: int = 64 * 64
    min_image_pixels: int = 16 * 16
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.num_hidden_layers < 2:
            raise ValueError(f"num_hidden_layers must be >= 2, got {self.num_hidden_layers}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even, got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if int(self.num_position_embeddings**0.5) ** 2 != self.num_position_embeddings:
            raise ValueError(f"num_position_embeddings must be a square, got {self.num_position_embeddings}")

    @property
    def mrope_section(self) -> list[int]:
        """M-RoPE split of head_dim/2 frequencies over (time, height, width), in Qwen3-VL's 24:20:20 ratio."""
        half = self.head_dim // 2
        spatial = half * 20 // 64
        return [half - 2 * spatial, spatial, spatial]


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's special tokens and chat template, trained on `corpus`.

    Args:
        corpus (`Iterable[str]`, *optional*): training text; defaults to ``DEFAULT_CORPUS``.
        vocab_size (`int`, defaults to 512): target vocabulary size (special tokens and 256 bytes included).

    Returns:
        `PreTrainedTokenizerFast` with left padding, ``<|im_end|>`` as EOS and ``<|endoftext|>`` as padding.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(corpus if corpus is not None else DEFAULT_CORPUS), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=CHAT_TOKENS.im_end,
        pad_token=SPECIAL_TOKENS[0],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(
    tokenizer: PreTrainedTokenizerFast, spec: TinyQwen3VLSpec = TinyQwen3VLSpec()
) -> Qwen3VLImageProcessor:
    """The processor of the tiny MLLM: Qwen2-VL's image processor sized for the tiny vision tower."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        merge_size=spec.merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        size={"shortest_edge": spec.min_image_pixels, "longest_edge": spec.max_image_pixels},
    )
    return Qwen3VLImageProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_tiny_qwen3vl(
    tokenizer: PreTrainedTokenizerFast, spec: TinyQwen3VLSpec = TinyQwen3VLSpec(), seed: int = 0
) -> Qwen3VLForConditionalGeneration:
    """A randomly initialised tiny ``Qwen3VLForConditionalGeneration`` whose vocabulary matches `tokenizer`."""
    token_id = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "head_dim": spec.head_dim,
            "max_position_embeddings": 4096,
            "pad_token_id": tokenizer.pad_token_id,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": spec.rope_theta,
                "mrope_section": spec.mrope_section,
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_num_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": spec.merge_size,
            "temporal_patch_size": spec.temporal_patch_size,
            "out_hidden_size": spec.hidden_size,
            "num_position_embeddings": spec.num_position_embeddings,
            "deepstack_visual_indexes": list(spec.deepstack_visual_indexes),
        },
        image_token_id=token_id(CHAT_TOKENS.image_pad),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id(CHAT_TOKENS.vision_start),
        vision_end_token_id=token_id(CHAT_TOKENS.vision_end),
    )
    # Seed a private generator state: building a model must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_tiny_mllm(
    spec: TinyQwen3VLSpec = TinyQwen3VLSpec(),
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    save_directory: str | os.PathLike | None = None,
) -> ThinkGenMLLM:
    """Build the tiny MLLM, its tokenizer and processor; optionally save all of them to `save_directory`.

    Args:
        spec (`TinyQwen3VLSpec`): sizes.
        corpus (`Iterable[str]`, *optional*): tokenizer training text (defaults to ``DEFAULT_CORPUS``).
        seed (`int`, defaults to 0): weight initialisation seed.
        save_directory (`str`, *optional*): where to save; ``ThinkGenMLLM.from_pretrained`` loads it back.

    Returns:
        :class:`~thinkgen.models.mllm.ThinkGenMLLM`.

    Example:
        ```python
        mllm = build_tiny_mllm(save_directory="/tmp/tiny_mllm")
        same = ThinkGenMLLM.from_pretrained("/tmp/tiny_mllm")
        ```
    """
    tokenizer = build_tiny_tokenizer(corpus, spec.vocab_size)
    mllm = ThinkGenMLLM(build_tiny_qwen3vl(tokenizer, spec, seed), build_tiny_processor(tokenizer, spec))
    if save_directory is not None:
        mllm.save_pretrained(save_directory)
    return mllm
