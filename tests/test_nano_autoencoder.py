"""The nano palette autoencoder: codec interface, palette labelling, determinism, save / load."""

import json

import pytest
import torch

from thinkgen.models.nano_autoencoder import NanoAutoencoder
from thinkgen.models.vae import load_codec
from thinkgen.world.dataset import to_tensor
from thinkgen.world.render import render
from thinkgen.world.scene import BACKGROUND_RGB, COLOURS, Scene, SceneObject, Word

PALETTE = [list(COLOURS[c]) for c in ("red", "blue", "black")]


def _model(factor: int = 4, channels: int = 3) -> NanoAutoencoder:
    torch.manual_seed(0)
    return NanoAutoencoder(palette=PALETTE, background=list(BACKGROUND_RGB), latent_channels=channels,
                           downscale_factor=factor, base_channels=8).eval()


@pytest.mark.parametrize("factor", [4, 8])
def test_shapes_and_interface(factor):
    model = _model(factor, channels=5)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    z = model.encode(images)
    assert z.shape == (2, 5, 32 // factor, 48 // factor)
    assert model.latent_channels == 5 and model.downscale_factor == factor and model.num_classes == 4
    out = model.decode(z)
    assert out.shape == images.shape and out.dtype == torch.float32


def test_decode_paints_only_palette_colours():
    model = _model()
    out = model.decode(torch.randn(3, 3, 8, 8))  # (3, 3, 32, 32)
    colours = {tuple(p) for p in ((out + 1) * 127.5).round().int().permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    allowed = {tuple(BACKGROUND_RGB), *(tuple(c) for c in PALETTE)}
    assert colours <= allowed


def test_encode_is_deterministic_and_ignores_the_generator():
    model = _model()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    a = model.encode(images, generator=torch.Generator().manual_seed(1))
    b = model.encode(images, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.decode(a), model.decode(b), rtol=0, atol=0)


def test_latent_statistics_normalise_latents():
    model = _model()
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    raw = model.encode_raw(images)
    model.set_latent_statistics(raw)
    z = model.encode(images)
    flat = z.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(3), atol=1e-4, rtol=0)
    # decode undoes the normalisation before the decoder runs
    expected = model.class_colours[model.decode_logits(raw).argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(model.decode(z), expected, rtol=0, atol=1e-5)


def test_palette_labels_of_a_rendered_scene():
    model = _model()
    scene = Scene(
        objects=(SceneObject("square", "red", 0.25, 0.25, 0.3), SceneObject("circle", "blue", 0.75, 0.7, 0.3)),
        words=(Word("ab", 0.3, 0.8, 0.2),),
    )
    image = to_tensor(render(scene, 64))[None] * 2 - 1
    labels = model.palette_labels(image)[0]
    assert labels[16, 16] == 1 and labels[45, 48] == 2 and labels[2, 60] == 0  # red, blue, background
    # every pixel of the anti-aliased text is background or black, never a colour it merely resembles
    assert set(labels[44:60, 4:36].unique().tolist()) <= {0, 3}
    assert (labels == 3).any()


def test_save_and_load_round_trip(tmp_path):
    model = _model()
    model.set_latent_statistics(torch.randn(4, 3, 4, 4) * 0.3 + 0.1)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "NanoAutoencoder"
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_codec(tmp_path)
    assert isinstance(loaded, NanoAutoencoder) and not loaded.training
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.encode(images), model.encode(images), rtol=0, atol=0)
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(loaded.decode(z), model.decode(z), rtol=0, atol=0)


def test_bad_settings_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="power of two"):
        NanoAutoencoder(palette=PALETTE, downscale_factor=6)
    with pytest.raises(ValueError, match="palette"):
        NanoAutoencoder(palette=[])
    with pytest.raises(ValueError, match="multiples of 4"):
        _model().encode(torch.zeros(1, 3, 18, 16))
