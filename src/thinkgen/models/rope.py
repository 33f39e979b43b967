"""3-axis rotary position embedding of the ThinkGen DiT.

Every token of the joint sequence ``[text | ref_1 … ref_k | noisy image]`` gets a position id with three
components (DESIGN.md, "RoPE ids"):

* text token ``i`` → ``(i, i, i)`` (the prepadding states count as text);
* reference image ``j`` → axis 0 = a shift that starts at the text length and grows by
  ``max(H_tok, W_tok)`` after each reference image, axes 1–2 = row / column from 0;
* the noisy image → axis 0 = the shift after the last reference image, axes 1–2 = row / column.

Each axis ``a`` owns ``axes_dim[a]`` channels of a head (``sum(axes_dim) == head_dim``) and rotates
neighbouring channel pairs ``(2k, 2k + 1)`` by ``position · θ^(−2k / axes_dim[a])``, θ = 10000: the
complex-pair (interleaved) convention of the released code, not the half-split one of GPT-NeoX.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ROPE_THETA = 10000.0


def text_position_ids(num_tokens: int, device: torch.device | None = None) -> torch.Tensor:
    """Position ids of ``num_tokens`` text tokens: token ``i`` → ``(i, i, i)``.

    Returns:
        ``(num_tokens, 3)`` int64.
    """
    return torch.arange(num_tokens, device=device)[:, None].expand(num_tokens, 3)


def grid_position_ids(
    grid_height: int, grid_width: int, shift: int, device: torch.device | None = None
) -> torch.Tensor:
    """Position ids of an image's tokens in row-major order: ``(shift, row, col)``.

    Args:
        grid_height: Number of token rows (latent height // patch size).
        grid_width: Number of token columns.
        shift: The axis-0 value shared by all tokens of this image.

    Returns:
        ``(grid_height * grid_width, 3)`` int64.
    """
    rows = torch.arange(grid_height, device=device)[:, None].expand(grid_height, grid_width)
    cols = torch.arange(grid_width, device=device)[None, :].expand(grid_height, grid_width)
    shifts = torch.full_like(rows, shift)
    return torch.stack([shifts, rows, cols], dim=-1).reshape(-1, 3)  # (H_tok * W_tok, 3)


def image_position_ids(
    text_len: int,
    ref_grid_sizes: Sequence[tuple[int, int]],
    image_grid_size: tuple[int, int],
    device: torch.device | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Position ids of one sample's reference images and noisy image.

    Args:
        text_len: Number of valid text tokens of the sample (prepadding included).
        ref_grid_sizes: ``(H_tok, W_tok)`` of each reference image, in order.
        image_grid_size: ``(H_tok, W_tok)`` of the noisy image.

    Returns:
        A list with one ``(H_tok_j * W_tok_j, 3)`` tensor per reference image, and the noisy image's
        ``(H_tok * W_tok, 3)`` ids.
    """
    shift = text_len
    ref_ids = []
    for grid_height, grid_width in ref_grid_sizes:
        ref_ids.append(grid_position_ids(grid_height, grid_width, shift, device))
        # Each reference image advances axis 0 by its longer side, so images never share a shift.
        shift += max(grid_height, grid_width)
    return ref_ids, grid_position_ids(*image_grid_size, shift, device)


class RotaryEmbedding3D:
    """Turns 3-axis position ids into per-channel-pair cos / sin tables.

    The released code gathers rows of precomputed tables with ``axes_lens`` rows per axis; computing
    ``position · frequency`` directly gives the same numbers, and ``axes_lens`` still bounds the ids so
    that a position the released model never saw raises instead of silently extrapolating.

    Args:
        axes_dim: Channels per axis, e.g. ``(40, 40, 40)``; each must be even.
        axes_lens: Largest position + 1 per axis, e.g. ``(10000, 10000, 10000)``.
        theta: RoPE base.
    """

    def __init__(self, axes_dim: Sequence[int], axes_lens: Sequence[int], theta: float = ROPE_THETA) -> None:
        if len(axes_dim) != 3 or len(axes_lens) != 3:
            raise ValueError(f"axes_dim and axes_lens need 3 entries, got {list(axes_dim)} and {list(axes_lens)}")
        if any(d % 2 for d in axes_dim):
            raise ValueError(f"axes_dim entries must be even, got {list(axes_dim)}")
        self.axes_dim = tuple(int(d) for d in axes_dim)
        self.axes_lens = tuple(int(n) for n in axes_lens)
        self.theta = theta

    def __call__(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos / sin of the rotation angles.

        Args:
            position_ids: ``(..., 3)`` integer ids.

        Returns:
            ``cos, sin``, each ``(..., head_dim // 2)`` float32.
        """
        for axis, limit in enumerate(self.axes_lens):
            largest = int(position_ids[..., axis].max()) if position_ids.numel() else 0
            if largest >= limit:
                raise ValueError(
                    f"RoPE position {largest} on axis {axis} exceeds axes_lens[{axis}] = {limit}; "
                    "use a shorter text / fewer or smaller reference images, or a larger axes_lens"
                )
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            # float64 like the released tables, so large positions keep their precision.
            exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=position_ids.device) / dim
            inv_freq = 1.0 / (self.theta**exponents)  # (dim // 2,)
            angles.append(position_ids[..., axis, None].to(torch.float64) * inv_freq)  # (..., dim // 2)
        angle = torch.cat(angles, dim=-1)  # (..., head_dim // 2)
        return angle.cos().float(), angle.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2k, 2k + 1)`` of each head, computed in float32.

    Args:
        x: ``(B, S, heads, head_dim)``.
        cos, sin: ``(B, S, head_dim // 2)``.

    Returns:
        Rotated ``x``, same shape and dtype.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, S, heads, head_dim // 2, 2)
    real, imag = pairs.unbind(-1)
    cos, sin = cos[:, :, None], sin[:, :, None]  # (B, S, 1, head_dim // 2)
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)  # (B, S, heads, head_dim)
