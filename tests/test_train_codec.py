"""The nano codec stage on a tiny codec: export loadable as a codec, exact resume after kill -9, recipe errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from thinkgen.models.nano_autoencoder import NanoAutoencoder
from thinkgen.models.vae import load_codec
from thinkgen.train.codec import WorldImages, same_detection, train
from thinkgen.train.config import RecipeError, load_recipe
from thinkgen.train.logs import read_metrics
from thinkgen.world.detect import Detection
from thinkgen.world.scene import Scene, SceneObject, get_preset

ROOT = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "codec.toml"
    path.write_text(f"""trainer = "codec"
[run]
output_dir = "{tmp_path / 'run'}"
max_steps = 4
log_every = 1
save_every = 2
use_tensorboard = false
[model]
latent_channels = 4
downscale_factor = 4
base_channels = 8
[data]
batch_size = 4
val_images = 4
test_images = 4
stats_images = 8
[optim]
lr = 2e-3
warmup_steps = 2
schedule = "cosine"
max_grad_norm = 0.0
[train]
eval_every = 2
""")
    return path


def test_codec_stage_exports_a_loadable_codec(tmp_path):
    result = train(load_recipe(_recipe(tmp_path)))
    assert result.step == 4 and len(result.losses) == 4
    codec = load_codec(tmp_path / "run" / "final")
    assert isinstance(codec, NanoAutoencoder) and (codec.latent_channels, codec.downscale_factor) == (4, 4)
    assert all(torch.equal(v, result.codec.state_dict()[k]) for k, v in codec.state_dict().items())
    assert not torch.equal(codec.latent_std, torch.ones(4)), "the latent statistics were measured"
    image = WorldImages(get_preset("nano"), ["composition"], "val", 0).take(1)  # (1, 3, 64, 64)
    latents = codec.encode(image)
    assert latents.shape == (1, 4, 16, 16)
    assert codec.decode(latents).shape == image.shape
    logged = read_metrics(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert "val_judge_exact" in logged[1] and "val_pixel_exact" not in logged[0]
    assert {k: logged[-1][f"test_{k}"] for k in result.test} == result.test
    assert set(result.test) == {"pixel_exact", "wrong_px_per_image", "judge_exact"}


def test_image_stream_resumes_at_the_exact_image():
    world = get_preset("nano")
    whole = WorldImages(world, ["edit"], "train", 3).take(5)  # edit samples hold 2 images: a sample is split
    first = WorldImages(world, ["edit"], "train", 3)
    first.take(3)
    rest = WorldImages(world, ["edit"], "train", 3)
    rest.load_state_dict(first.state_dict())
    assert torch.equal(rest.take(2), whole[3:])


def test_same_detection_tolerates_anti_aliasing_only():
    scene = Scene(objects=(SceneObject("star", "red", 0.3, 0.3, 0.3),))
    nudged = Scene(objects=(SceneObject("star", "red", 0.31, 0.3, 0.3),))
    moved = Scene(objects=(SceneObject("star", "red", 0.5, 0.3, 0.3),))
    recoloured = Scene(objects=(SceneObject("star", "blue", 0.3, 0.3, 0.3),))
    a = Detection.from_scene(scene, 64)
    assert same_detection(a, Detection.from_scene(nudged, 64))
    assert not same_detection(a, Detection.from_scene(moved, 64))
    assert not same_detection(a, Detection.from_scene(recoloured, 64))


def test_killed_run_resumes_exactly(tmp_path):
    """A run killed with SIGKILL right after a checkpoint continues with the same loss at every step."""
    recipe = _recipe(tmp_path)
    steps = ["run.max_steps=30", "train.eval_every=10"]
    reference = train(load_recipe(recipe, [*steps, f"run.output_dir='{tmp_path / 'ref'}'"]))

    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "thinkgen.cli", "train", "--recipe", str(recipe), "--set", steps[0],
               "--set", steps[1], "--set", f"run.output_dir='{killed_dir}'"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "step_00000002").is_dir() and process.poll() is None:
        assert time.time() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    resumed = train(load_recipe(recipe, [*steps, f"run.output_dir='{killed_dir}'"]))
    assert 0 < len(resumed.losses) < 30, "the killed run must have been stopped before its end"
    assert resumed.losses == reference.losses[-len(resumed.losses):]  # bitwise
    logged = read_metrics(killed_dir)
    assert [r["step"] for r in logged] == list(range(1, 31))
    assert [r["loss"] for r in logged] == reference.losses
    assert resumed.test == reference.test
    assert all(torch.equal(v, reference.codec.state_dict()[k]) for k, v in resumed.codec.state_dict().items())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.ink_weight=0", "train.ink_weight must be > 0"),
        ("data.scenarios=['paint']", "data.scenarios: unknown scenario 'paint'"),
        ("model.downscale_factor=3", "model.downscale_factor must be a power of two"),
        ("optim.weight_decay=0.1", "optim.weight_decay must be 0 for the codec"),
        ("data.threads=2", "unknown key data.threads"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")) as err:
        load_recipe(_recipe(tmp_path), [override])
    assert str(err.value).startswith(str(tmp_path / "codec.toml"))
