"""A small image autoencoder for palette worlds, used as the nano model's codec.

The nano world paints flat shapes and black words in a handful of palette colours on white. A generic VAE
spends its capacity on reproducing colours it could simply look up, and blurs corners that the world's
judge needs exact (a blunted star reads as a circle). This codec instead *classifies* each output pixel
into one of the palette's colours or the background (cross-entropy, ink pixels weighted up), so its
decoded images are always clean palette images and its training signal goes entirely into geometry.

Latents are ``tanh``-bounded (so their scale cannot drift during training) and normalised per channel by
statistics measured on world images after training (buffers ``latent_mean`` / ``latent_std``), so the
DiT sees roughly unit-variance latents, as it does with :class:`~thinkgen.models.vae.VAECodec`.

Interface (the same as :mod:`thinkgen.models.vae`'s codecs): images are float tensors in [-1, 1] shaped
``(B, 3, H, W)``; ``encode`` → ``(B, latent_channels, H/f, W/f)``; ``decode`` → images; plus
``latent_channels``, ``downscale_factor`` and ``save_pretrained``; ``from_pretrained`` and
:func:`thinkgen.models.vae.load_codec` load a saved folder.

Training (loss, world data, checks) is :mod:`thinkgen.train.codec`: ``thinkgen train --recipe
recipes/nano/codec.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _ResBlock(nn.Module):
    """Two 3×3 convolutions with a residual path; no normalisation, which costs CPU time and is not
    needed at this depth."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        # Start as the identity so stacking blocks never hurts early training.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _stage_widths(base_channels: int, num_stages: int) -> list[int]:
    # Widths grow by half the base per halving of resolution: wide enough deep down to carry the whole
    # scene, narrow at high resolution where convolutions are costly.
    return [base_channels + (base_channels // 2) * i for i in range(num_stages)]


class NanoAutoencoder(ModelMixin, ConfigMixin):
    """Convolutional autoencoder whose decoder classifies pixels into a palette.

    Args:
        palette: RGB colours of the classes after the background (class 0 is ``background``).
        background: RGB of the background (class 0).
        latent_channels: Channels of the latent.
        downscale_factor: Pixels per latent cell along each side; a power of two (4 or 8).
        base_channels: Width at half resolution; deeper stages are wider (see ``_stage_widths``).
        blocks_per_stage: Residual blocks at each resolution, in encoder and decoder alike.
    """

    @register_to_config
    def __init__(
        self,
        palette: Sequence[Sequence[int]] = ((20, 20, 20),),
        background: Sequence[int] = (255, 255, 255),
        latent_channels: int = 4,
        downscale_factor: int = 4,
        base_channels: int = 32,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        num_stages = int(downscale_factor).bit_length() - 1
        if downscale_factor < 2 or 2**num_stages != downscale_factor:
            raise ValueError(f"downscale_factor={downscale_factor} must be a power of two >= 2 (2, 4, 8, …)")
        if len(palette) < 1:
            raise ValueError("palette needs at least one colour besides the background")
        if latent_channels < 1 or base_channels < 2 or blocks_per_stage < 0:
            raise ValueError(
                f"latent_channels={latent_channels}, base_channels={base_channels}, "
                f"blocks_per_stage={blocks_per_stage}: need >= 1, >= 2 and >= 0"
            )
        colours = torch.tensor([list(background), *[list(c) for c in palette]], dtype=torch.float32)
        # Class colours in [-1, 1], class 0 the background.
        self.register_buffer("class_colours", colours / 127.5 - 1.0)
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        widths = _stage_widths(base_channels, num_stages)
        num_classes = colours.shape[0]

        # No convolution runs at full resolution (the bulk of the cost on a CPU): the encoder starts by
        # folding 2×2 pixels into channels and the decoder ends by predicting the classes of 2×2 pixels
        # per cell, then unfolding them. The 3×3 convolutions at half resolution still see every pixel.
        encoder: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(12, widths[0], 3, padding=1)]
        for i in range(num_stages - 1):
            encoder += [_ResBlock(widths[i]) for _ in range(blocks_per_stage)]
            encoder.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        encoder += [_ResBlock(widths[-1]) for _ in range(blocks_per_stage)]
        encoder += [nn.SiLU(), nn.Conv2d(widths[-1], latent_channels, 1)]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        decoder += [_ResBlock(widths[-1]) for _ in range(blocks_per_stage)]
        for i in reversed(range(num_stages - 1)):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
            decoder += [_ResBlock(widths[i]) for _ in range(blocks_per_stage)]
        decoder += [nn.SiLU(), nn.Conv2d(widths[0], 4 * num_classes, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*decoder)

    # The codec interface reads these as plain attributes, like VAECodec's.
    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

    @property
    def downscale_factor(self) -> int:
        return int(self.config.downscale_factor)

    @property
    def num_classes(self) -> int:
        return int(self.class_colours.shape[0])

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.downscale_factor
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"images must be (B, 3, H, W) with H and W multiples of {f}, got {tuple(images.shape)}"
            )

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents in (-1, 1): ``(B, 3, H, W)`` in [-1, 1] → ``(B, C, H/f, W/f)``."""
        self._check_images(images)
        dtype = self.class_colours.dtype
        return torch.tanh(self.encoder(images.to(dtype)))

    def decode_logits(self, raw_latents: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, K, H, W)`` of unnormalised latents (K = palette size + 1)."""
        return self.decoder(raw_latents.to(self.class_colours.dtype))

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, C, H/f, W/f) normalised latents.

        The encoder is deterministic; ``generator`` is accepted for interface compatibility and unused.
        """
        return (self.encode_raw(images).float() - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised latents → (B, 3, h·f, w·f) palette images in [-1, 1] (argmax class)."""
        raw = latents.float() * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        labels = self.decode_logits(raw).argmax(dim=1)  # (B, H, W)
        return self.class_colours[labels].permute(0, 3, 1, 2).float()

    def palette_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The class of every pixel of (anti-aliased) images in [-1, 1]: ``(B, 3, H, W)`` → ``(B, H, W)``.

        An edge pixel is a blend ``a·c + (1 − a)·background`` of one colour ``c`` with the background.
        For each class colour the best ``a`` is found by projecting onto the segment background → c; the
        colour with the smallest residual wins, and the pixel is ink iff its coverage ``a`` is at least
        one half. Plain nearest-colour labelling would be wrong here: a half-covered black pixel is gray,
        nearer to purple than to black or white.
        """
        self._check_images(images)
        pixels = images.float().permute(0, 2, 3, 1)[..., None, :]  # (B, H, W, 1, 3)
        background = self.class_colours[0]
        direction = self.class_colours[1:] - background  # (K-1, 3)
        offset = pixels - background  # (B, H, W, 1, 3)
        coverage = ((offset * direction).sum(-1) / (direction * direction).sum(-1)).clamp(0, 1)  # (B, H, W, K-1)
        residual = (offset - coverage[..., None] * direction).square().sum(-1)  # (B, H, W, K-1)
        best = residual.argmin(dim=-1)  # (B, H, W)
        best_coverage = coverage.gather(-1, best[..., None])[..., 0]
        return torch.where(best_coverage >= 0.5, best + 1, torch.zeros_like(best))

    @torch.no_grad()
    def set_latent_statistics(self, raw_latents: torch.Tensor) -> None:
        """Normalise future latents by the per-channel mean and std of ``raw_latents`` ``(N, C, h, w)``."""
        flat = raw_latents.float().transpose(0, 1).reshape(self.latent_channels, -1)
        self.latent_mean.copy_(flat.mean(dim=1))
        self.latent_std.copy_(flat.std(dim=1).clamp_min(1e-6))

    def save_pretrained(self, save_directory: str | Path, **kwargs: object) -> None:  # type: ignore[override]
        """Save config and weights (safetensors) to ``save_directory``."""
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)

