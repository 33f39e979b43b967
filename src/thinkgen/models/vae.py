"""Image ↔ latent codecs for the DiT.

Two kinds share one small interface:

* :class:`VAECodec` wraps diffusers' ``AutoencoderKL`` (the FLUX VAE in the released model: 16 channels,
  ×8) and applies its shift and scale, so the DiT sees ``(z − shift)·scale``.
* :class:`PixelCodec` is the identity for models that denoise pixels directly.

Images are float tensors in [-1, 1], shaped (B, 3, H, W).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

PIXEL_CODEC_CLASS = "PixelCodec"


class ImageCodec(Protocol):
    latent_channels: int
    downscale_factor: int

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def save_pretrained(self, path: str | Path) -> None: ...


class PixelCodec:
    """The identity codec: latents are the pixels themselves (3 channels, factor 1)."""

    latent_channels = 3
    downscale_factor = 1

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1, 1)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"_class_name": PIXEL_CODEC_CLASS}, indent=2) + "\n")


class VAECodec:
    """A diffusers ``AutoencoderKL`` with the latent normalisation the DiT was trained with."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        # FLUX's VAE has a shift; older VAEs (SD) have none.
        self.shift_factor = float(config.shift_factor or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downscale_factor = 2 ** (len(config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, C, H/f, W/f) normalised latents.

        With a ``generator`` the posterior is sampled (training); without, its mode is used (inference).
        """
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(dtype)).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()
        return ((z.float() - self.shift_factor) * self.scaling_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) normalised latents → (B, 3, h·f, w·f) images in [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.float() / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(dtype)).sample.float().clamp(-1, 1)

    def save_pretrained(self, path: str | Path) -> None:
        self.vae.save_pretrained(path, safe_serialization=True)


def load_codec(path: str | Path, torch_dtype: torch.dtype | None = None) -> ImageCodec:
    """Load the codec saved in ``path`` (a diffusers ``AutoencoderKL`` folder, a
    :class:`~thinkgen.models.nano_autoencoder.NanoAutoencoder` folder or a pixel-codec marker)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no codec config at {config_file}")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name == PIXEL_CODEC_CLASS:
        return PixelCodec()
    if class_name == "NanoAutoencoder":
        from thinkgen.models.nano_autoencoder import NanoAutoencoder

        return NanoAutoencoder.from_pretrained(path, torch_dtype=torch_dtype, use_safetensors=True).eval()
    if class_name == "AutoencoderKL":
        from diffusers import AutoencoderKL

        return VAECodec(AutoencoderKL.from_pretrained(path, torch_dtype=torch_dtype, use_safetensors=True))
    raise ValueError(
        f"unknown codec class {class_name!r} in {config_file}; allowed: AutoencoderKL, NanoAutoencoder, "
        f"{PIXEL_CODEC_CLASS}"
    )
