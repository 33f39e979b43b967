"""The tiny random ThinkGen pipeline the tests run on: a few-layer MLLM, a one-block DiT, the pixel codec."""

from __future__ import annotations

import torch

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.models.mllm import ThinkingConfig
from thinkgen.models.tiny import build_tiny_mllm
from thinkgen.models.vae import PixelCodec
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline

# Short thoughts: a random MLLM rambles until its budget is spent.
FAST_THINKING = ThinkingConfig(max_thinking_tokens=6, max_instruction_tokens=4)


def tiny_dit(text_feat_dim: int, **config: object) -> ThinkGenTransformer2DModel:
    """A one-block DiT (patch 2, width 32) with random weights, the same for every call; ``config`` adds
    constructor settings (e.g. ``caption_layers``)."""
    torch.manual_seed(0)
    dit = ThinkGenTransformer2DModel(
        patch_size=2, in_channels=3, hidden_size=32, num_layers=1, num_refiner_layers=1, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(1024, 1024, 1024),
        text_feat_dim=text_feat_dim, num_prepad_states=4, **config,
    )
    # Fresh DiTs start with zeroed output layers (AdaLN-zero); randomise so outputs depend on the inputs.
    with torch.no_grad():
        for p in dit.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return dit.eval()


def build_tiny_pipeline(**config: object) -> ThinkGenPipeline:
    """The tiny pipeline: 16×16 images, 3 steps, a short negative prompt; ``config`` overrides those defaults."""
    mllm = build_tiny_mllm()
    settings = {"height": 16, "width": 16, "num_inference_steps": 3, "negative_prompt": "blurry", **config}
    return ThinkGenPipeline(mllm, tiny_dit(mllm.hidden_size), PixelCodec(), PipelineConfig(**settings))
