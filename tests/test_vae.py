"""Image codecs: AutoencoderKL with shift/scale, and the pixel identity."""

import pytest
import torch

from thinkgen.models.vae import PixelCodec, VAECodec, load_codec


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.5,
        shift_factor=0.25,
    ).eval()


def test_vae_codec_applies_shift_then_scale():
    vae = _tiny_vae()
    codec = VAECodec(vae)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(images)
    assert z.shape == (2, 4, 8, 8) and codec.downscale_factor == 2
    raw = vae.encode(images).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.25) * 0.5)
    torch.testing.assert_close(codec.decode(z), vae.decode(raw).sample.clamp(-1, 1))


def test_vae_codec_samples_the_posterior_only_with_a_generator():
    codec = VAECodec(_tiny_vae())
    images = torch.zeros(1, 3, 16, 16)
    a = codec.encode(images, generator=torch.Generator().manual_seed(1))
    b = codec.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, codec.encode(images))


def test_codecs_roundtrip_through_disk(tmp_path):
    codec = VAECodec(_tiny_vae())
    codec.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_codec(tmp_path / "vae")
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(images), codec.encode(images))

    PixelCodec().save_pretrained(tmp_path / "pixels")
    pixels = load_codec(tmp_path / "pixels")
    assert isinstance(pixels, PixelCodec)
    torch.testing.assert_close(pixels.decode(pixels.encode(images)), images)


def test_unknown_codec_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "MagicVAE"}')
    with pytest.raises(ValueError, match="MagicVAE"):
        load_codec(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_codec(tmp_path / "missing")
