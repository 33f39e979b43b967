"""Building blocks of the ThinkGen DiT (OmniGen2 / Lumina-2 family).

Module and parameter names follow the released state dict (``reference/thinkgen_dit_4b_state_dict.txt``),
so ``load_state_dict(strict=True)`` of the released weights works without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from thinkgen.models.rope import apply_rotary

# Sinusoidal timestep features fed to the timestep MLP (1024 wide in the 4B model).
TIMESTEP_FREQ_DIM = 256
# The modulation / conditioning width is the hidden size, capped at 1024 (4B: 2520 → 1024).
MAX_CONDITIONING_DIM = 1024
# The output norm is a parameter-free LayerNorm with its own eps, independent of ``norm_eps``.
OUTPUT_NORM_EPS = 1e-6


def conditioning_dim(hidden_size: int) -> int:
    """Width of the timestep embedding that drives every AdaLN modulation."""
    return min(hidden_size, MAX_CONDITIONING_DIM)


def swiglu_hidden_dim(hidden_size: int, multiple_of: int) -> int:
    """SwiGLU hidden width: 4 × hidden rounded up to a multiple of ``multiple_of`` (4B: 10080 → 10240)."""
    return multiple_of * math.ceil(4 * hidden_size / multiple_of)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, computed in float32 and cast back to the input dtype.

    Args:
        dim: Normalised (last) dimension.
        eps: Added to the mean square.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def timestep_sinusoid(timestep: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal features of ``scale · t`` with the cosine half first.

    Frequencies are ``10000^(−k / (dim/2))`` (no frequency shift); the released model scales
    t ∈ [0, 1] by ``timestep_scale`` = 1000 so the features span the usual DDPM range.

    Args:
        timestep: ``(B,)`` in [0, 1].
        dim: Feature width (even).
        scale: ``timestep_scale``.

    Returns:
        ``(B, dim)`` float32.
    """
    half = dim // 2
    exponents = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    # (t · freq) · scale in float32, in this order: angles reach ~1000 rad, so the rounding of the
    # product matters at the 1e-4 level and must follow the released code's order.
    angles = (timestep.float()[:, None] * torch.exp(exponents)[None]) * scale  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, dim)


class TimestepEmbedder(nn.Module):
    """MLP over the timestep sinusoid: ``linear_2(silu(linear_1(·)))``."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_FREQ_DIM, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class TimestepCaptionEmbedding(nn.Module):
    """Timestep MLP plus the connector (DESIGN.md: ``caption_embedder = [RMSNorm(2·D), Linear(2·D → hidden)]``).

    Args:
        hidden_size: DiT width.
        caption_dim: Width of the conditioning features (2 × the MLLM hidden size).
        norm_eps: Eps of the connector's RMSNorm.
        timestep_scale: Multiplies t ∈ [0, 1] before the sinusoid.
    """

    def __init__(self, hidden_size: int, caption_dim: int, norm_eps: float, timestep_scale: float) -> None:
        super().__init__()
        self.timestep_scale = timestep_scale
        self.timestep_embedder = TimestepEmbedder(conditioning_dim(hidden_size))
        self.caption_embedder = nn.Sequential(RMSNorm(caption_dim, norm_eps), nn.Linear(caption_dim, hidden_size))

    def forward(self, timestep: torch.Tensor, caption_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``temb`` ``(B, min(hidden, 1024))`` and caption states ``(B, L, hidden)``."""
        dtype = self.timestep_embedder.linear_1.weight.dtype
        features = timestep_sinusoid(timestep, TIMESTEP_FREQ_DIM, self.timestep_scale).to(dtype)
        return self.timestep_embedder(features), self.caption_embedder(caption_states)


class SwiGLUFeedForward(nn.Module):
    """``linear_2(silu(linear_1 x) · linear_3 x)``, no biases."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, hidden_dim, bias=False)
        self.linear_2 = nn.Linear(hidden_dim, dim, bias=False)
        self.linear_3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)) * self.linear_3(x))


class Attention(nn.Module):
    """Self-attention with grouped KV heads, per-head RMSNorm on q / k, and 3-axis RoPE.

    Args:
        dim: Model width.
        num_heads: Query heads.
        num_kv_heads: Key / value heads (``num_heads`` must be a multiple).
        eps: Eps of the q / k RMSNorms.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, eps: float) -> None:
        super().__init__()
        if dim % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"hidden_size ({dim}) must be divisible by num_attention_heads ({num_heads}), "
                f"and num_attention_heads by num_kv_heads ({num_kv_heads})"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, num_heads * self.head_dim, bias=False)
        self.to_k = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
        self.to_v = nn.Linear(dim, num_kv_heads * self.head_dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, eps)
        self.norm_k = RMSNorm(self.head_dim, eps)
        # A ModuleList so the key reads ``to_out.0.weight`` as in the released weights.
        self.to_out = nn.ModuleList([nn.Linear(num_heads * self.head_dim, dim, bias=False)])

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, rope_cos: torch.Tensor, rope_sin: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            x: ``(B, S, dim)``.
            key_mask: ``(B, S)`` bool, True for real tokens; padding is never attended to. ``None`` when
                there is no padding, which lets SDPA pick its fastest (flash) kernel.
            rope_cos, rope_sin: ``(B, S, head_dim // 2)``.

        Returns:
            ``(B, S, dim)``.
        """
        # Reshape with -1 heads: under tensor parallelism a rank holds only a slice of the heads.
        q = self.norm_q(self.to_q(x).unflatten(-1, (-1, self.head_dim)))  # (B, S, H, hd)
        k = self.norm_k(self.to_k(x).unflatten(-1, (-1, self.head_dim)))  # (B, S, H_kv, hd)
        v = self.to_v(x).unflatten(-1, (-1, self.head_dim))  # (B, S, H_kv, hd)
        q = apply_rotary(q, rope_cos, rope_sin).transpose(1, 2)  # (B, H, S, hd)
        k = apply_rotary(k, rope_cos, rope_sin).transpose(1, 2)  # (B, H_kv, S, hd)
        v = v.transpose(1, 2)  # (B, H_kv, S, hd)
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None  # (B, 1, 1, S)
        # GQA: query head h reads KV head h // (H / H_kv), the grouping of the released weights.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=q.shape[1] != k.shape[1])
        # out: (B, H, S, hd)
        return self.to_out[0](out.transpose(1, 2).flatten(2))  # (B, S, dim)


class AdaRMSNormZero(nn.Module):
    """RMSNorm modulated by the timestep: yields the attention input and three more modulation terms.

    ``linear(silu(temb))`` is split into ``scale_msa, gate_msa, scale_mlp, gate_mlp`` (in that order);
    the attention input is ``norm(x) · (1 + scale_msa)``.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.linear = nn.Linear(conditioning_dim(dim), 4 * dim)
        self.norm = RMSNorm(dim, eps)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(B, S, dim)`` normalised input and ``gate_msa, scale_mlp, gate_mlp``, each ``(B, 1, dim)``."""
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.linear(F.silu(temb))[:, None].chunk(4, dim=-1)
        return self.norm(x) * (1 + scale_msa), gate_msa, scale_mlp, gate_mlp


class ThinkGenTransformerBlock(nn.Module):
    """Pre- and post-normalised ("sandwich") attention + SwiGLU block.

    With ``use_modulation`` (noise / reference refiners, joint blocks) the block is AdaLN-zero:
    the attention input is scaled by the timestep, the FFN input too, and both residual branches are
    gated by ``tanh(gate)``. Without it (context refiner) the text is refined independently of t.

    Args:
        dim: Model width.
        num_heads, num_kv_heads: Attention heads.
        ffn_dim: SwiGLU hidden width.
        norm_eps: Eps of every RMSNorm in the block.
        use_modulation: Whether the block is conditioned on the timestep.
    """

    def __init__(
        self, dim: int, num_heads: int, num_kv_heads: int, ffn_dim: int, norm_eps: float, use_modulation: bool
    ) -> None:
        super().__init__()
        self.use_modulation = use_modulation
        self.attn = Attention(dim, num_heads, num_kv_heads, eps=norm_eps)
        self.feed_forward = SwiGLUFeedForward(dim, ffn_dim)
        self.norm1 = AdaRMSNormZero(dim, norm_eps) if use_modulation else RMSNorm(dim, norm_eps)
        self.ffn_norm1 = RMSNorm(dim, norm_eps)
        self.norm2 = RMSNorm(dim, norm_eps)
        self.ffn_norm2 = RMSNorm(dim, norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: ``(B, S, dim)``.
            key_mask: ``(B, S)`` bool, or ``None`` without padding.
            rope_cos, rope_sin: ``(B, S, head_dim // 2)``.
            temb: ``(B, min(dim, 1024))``; required iff the block uses modulation.

        Returns:
            ``(B, S, dim)``.
        """
        if self.use_modulation:
            if temb is None:
                raise ValueError("a modulated block needs temb, got None")
            h, gate_msa, scale_mlp, gate_mlp = self.norm1(x, temb)
            x = x + gate_msa.tanh() * self.norm2(self.attn(h, key_mask, rope_cos, rope_sin))
            ffn_out = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp))
            return x + gate_mlp.tanh() * self.ffn_norm2(ffn_out)
        x = x + self.norm2(self.attn(self.norm1(x), key_mask, rope_cos, rope_sin))
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))


class AdaLayerNormOut(nn.Module):
    """Final norm: parameter-free LayerNorm scaled by ``1 + linear_1(silu(temb))``, then ``linear_2`` to patches."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(conditioning_dim(dim), dim)
        self.linear_2 = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, S, dim)``, ``temb`` ``(B, cond)`` → ``(B, S, out_dim)``."""
        scale = self.linear_1(F.silu(temb))[:, None]  # (B, 1, dim)
        x = F.layer_norm(x, x.shape[-1:], eps=OUTPUT_NORM_EPS) * (1 + scale)
        return self.linear_2(x)
