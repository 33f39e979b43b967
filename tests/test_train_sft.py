"""DiT stages 1-3 on a tiny DiT: what each stage trains, exact resume after kill -9, DDP = one process,
LoRA / EMA / checkpointing / edits, broken samples, logs and sample images."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate.utils import set_seed
from distributed_support import one_thread_env, run_two_processes
from train_recipes import TINY_DIT, sft_recipe, write_jsonl

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.train.config import load_recipe
from thinkgen.train.logs import read_metrics
from thinkgen.train.sft import train

pytestmark = pytest.mark.usefixtures("one_thread")

SFT_IMPORTS = "from thinkgen.train.config import load_recipe\nfrom thinkgen.train.sft import train\n"


def _tiny_dit(seed: int = 0) -> ThinkGenTransformer2DModel:
    import tomllib

    set_seed(seed)
    return ThinkGenTransformer2DModel(text_feat_dim=64, in_channels=3, **tomllib.loads(f"d = {TINY_DIT}")["d"])


def test_connector_stage_trains_only_connector_and_prepad(tmp_path):
    # A "pretrained" DiT: AdaLN-zero gates opened, so the text reaches the output (at init it cannot,
    # and stage 1 on a fresh DiT would get no gradient at all).
    pretrained = _tiny_dit()
    with torch.no_grad():
        for name, param in pretrained.named_parameters():
            if "norm1.linear" in name or "norm_out" in name:
                param.normal_(0, 0.2)
    pretrained.save_pretrained(tmp_path / "pretrained")
    recipe = sft_recipe(tmp_path, extra='stage = "connector"')
    recipe.write_text(recipe.read_text().replace(f"dit = {TINY_DIT}", f"transformer = '{tmp_path / 'pretrained'}'"))
    result = train(load_recipe(recipe, ["run.max_steps=2", "run.save_every=0"]))

    initial = pretrained.state_dict()
    changed = {k for k, v in result.transformer.state_dict().items() if not torch.equal(v, initial[k])}
    assert changed == {"prepad_embed", "time_caption_embed.caption_embedder.0.weight",
                       "time_caption_embed.caption_embedder.1.weight", "time_caption_embed.caption_embedder.1.bias"}
    reloaded = ThinkGenTransformer2DModel.from_pretrained(tmp_path / "run" / "final" / "transformer")
    assert all(torch.equal(v, result.transformer.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_final_folder_is_a_pipeline_with_the_recipe_sampling_defaults(tmp_path):
    recipe = sft_recipe(tmp_path, extra='stage = "dit"\n[sample]\nimage_size = 16\nnum_inference_steps = 3\n'
                                         'guidance_scale = 1.5\n[flow]\ntime_shift_reference_side = 8.0')
    result = train(load_recipe(recipe, ["run.max_steps=2", "run.save_every=0"]))
    pipe = ThinkGenPipeline.from_pretrained(tmp_path / "run" / "final")
    assert (pipe.config.height, pipe.config.width, pipe.config.num_inference_steps, pipe.config.guidance_scale,
            pipe.config.time_shift_reference_side) == (16, 16, 3, 1.5, 8.0)
    assert all(torch.equal(v, result.transformer.state_dict()[k]) for k, v in pipe.transformer.state_dict().items())
    out = pipe("one red circle", think=False, generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (16, 16)
    assert all(r["loss"] > 0 for r in read_metrics(tmp_path / "run"))


def test_the_trainer_feeds_the_dit_the_layers_it_reads(tmp_path):
    """The same DiT weights and data, read through two caption layouts: the trainer must hand the MLLM the
    DiT's ``caption_layers``, or both runs would see the same states and log the same losses. (A new DiT's
    AdaLN-zero gates keep the text from the output at step 1, so the losses part from step 2.)"""
    losses = {}
    for layers in ("last_two", "embedding_and_last"):
        (tmp_path / layers).mkdir()
        recipe = sft_recipe(tmp_path / layers, extra='stage = "dit"')
        dit = TINY_DIT.replace("{ ", f'{{ caption_layers = "{layers}", ')
        recipe.write_text(recipe.read_text().replace(f"dit = {TINY_DIT}", f"dit = {dit}"))
        result = train(load_recipe(recipe, ["run.max_steps=3", "run.save_every=0"]))
        assert result.transformer.config.caption_layers == layers
        losses[layers] = [r["loss"] for r in read_metrics(tmp_path / layers / "run")]
    assert losses["last_two"][0] == losses["embedding_and_last"][0]
    assert losses["last_two"][-1] != losses["embedding_and_last"][-1]
    assert ThinkGenPipeline.from_pretrained(tmp_path / layers / "run" / "final").mllm.caption_layers == layers


def test_think_context_trains_on_the_states_a_think_mode_call_gives(tmp_path):
    """``data.think_context = 1`` encodes each answer after its prompt and thought (the think-mode states)
    instead of the pseudo-CoT template. On world samples, whose prompt and thought differ from the answer,
    the losses part once the text reaches the output (step 2); on records whose prompt is the answer and
    whose thought is empty the two contexts are the same text, so every loss is equal: the share draws
    nothing that moves the other per-sample draws."""

    def losses(folder: str, share: float, sources: str | None = None) -> list[float]:
        (tmp_path / folder).mkdir()
        recipe = sft_recipe(tmp_path / folder, extra='stage = "dit"', sources=sources)
        train(load_recipe(recipe, ["run.max_steps=3", "run.save_every=0", f"data.think_context={share}"]))
        return [r["loss"] for r in read_metrics(tmp_path / folder / "run")]

    world = '[[data.sources]]\nscenarios = ["reasoning", "composition"]\n'
    plain, thought = losses("world0", 0.0, world), losses("world1", 1.0, world)
    assert plain[0] == thought[0] and plain[-1] != thought[-1]
    data = write_jsonl(tmp_path / "data", [{"instruction": c, "answer": c} for c in ("one red circle", "two stars")])
    jsonl = f'[[data.sources]]\nkind = "jsonl"\npath = "{data}"\n'
    assert losses("jsonl0", 0.0, jsonl) == losses("jsonl1", 1.0, jsonl)
    with pytest.raises(ValueError, match="think_context = 0.5 needs prompt_field"):
        overrides = ["data.think_context=0.5", 'data.prompt_field="instruction"']
        load_recipe(sft_recipe(tmp_path, name="bad.toml"), overrides)
    with pytest.raises(ValueError, match=r"think_context must be in \[0, 1\]"):
        load_recipe(sft_recipe(tmp_path, name="bad2.toml"), ["data.think_context=1.5"])


def test_ink_weight_weighs_the_foreground_cells_of_the_loss(tmp_path):
    """``flow.ink_weight`` weighs the latent cells under the target's drawing: it changes the loss from the
    first step on world samples (small objects on a white canvas), and 1 is the plain MSE."""

    def losses(folder: str, weight: float) -> list[float]:
        (tmp_path / folder).mkdir()
        recipe = sft_recipe(tmp_path / folder, extra='stage = "dit"')
        train(load_recipe(recipe, ["run.max_steps=2", "run.save_every=0", f"flow.ink_weight={weight}"]))
        return [r["loss"] for r in read_metrics(tmp_path / folder / "run")]

    plain = losses("plain", 1.0)
    assert losses("one", 1.0) == plain
    assert losses("five", 5.0)[0] != plain[0]
    with pytest.raises(ValueError, match="ink_weight must be > 0"):
        load_recipe(sft_recipe(tmp_path, name="bad3.toml"), ["flow.ink_weight=0"])


def test_a_stage_can_start_from_a_deepened_dit(tmp_path):
    """The deepened DiT starts where the trained one is: the same first loss on the same batch."""
    first = train(load_recipe(sft_recipe(tmp_path, extra='stage = "dit"'), ["run.max_steps=2", "run.save_every=0"]))
    trained = tmp_path / "run" / "final" / "transformer"
    losses = {}
    for factor in (1, 2):
        recipe = sft_recipe(tmp_path, extra='stage = "dit"', name=f"x{factor}.toml")
        start = f'transformer = "{trained}"\ndepth_multiplier = {factor}\n'
        text = recipe.read_text().replace(f"dit = {TINY_DIT}\n", start)
        recipe.write_text(text.replace(f'"{tmp_path / "run"}"', f'"{tmp_path / f"x{factor}"}"'))
        result = train(load_recipe(recipe, ["run.max_steps=1", "run.save_every=0"]))
        assert result.transformer.config.num_layers == factor * first.transformer.config.num_layers
        losses[factor] = result.losses[0]
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_a_stage_trains_float32_weights_from_a_half_precision_dit(tmp_path):
    from thinkgen.pipeline import load_transformer, save_transformer

    first = train(load_recipe(sft_recipe(tmp_path, extra='stage = "dit"'), ["run.max_steps=1", "run.save_every=0"]))
    half = tmp_path / "half"
    save_transformer(load_transformer(tmp_path / "run" / "final" / "transformer"), half, torch.float16)
    recipe = sft_recipe(tmp_path, extra='stage = "dit"', name="from_half.toml")
    text = recipe.read_text().replace(f"dit = {TINY_DIT}\n", f'transformer = "{half}"\n')
    recipe.write_text(text.replace(f'"{tmp_path / "run"}"', f'"{tmp_path / "from_half"}"'))
    result = train(load_recipe(recipe, ["run.max_steps=1", "run.save_every=0"]))
    assert {p.dtype for p in result.transformer.parameters()} == {torch.float32}
    assert result.transformer.config.num_layers == first.transformer.config.num_layers


def test_killed_run_resumes_exactly(tmp_path):
    """A run killed with SIGKILL right after a checkpoint continues with the same loss at every step."""
    recipe = sft_recipe(tmp_path, extra='stage = "dit"\nema_decay = 0.9', name="a.toml")
    steps = ["run.max_steps=8", "run.save_every=2"]
    reference = train(load_recipe(recipe, [*steps, f"run.output_dir='{tmp_path / 'ref'}'"])).losses

    killed_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "thinkgen.cli", "train", "--recipe", str(recipe), "--set", steps[0],
               "--set", steps[1], "--set", f"run.output_dir='{killed_dir}'"]
    process = subprocess.Popen(command, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "step_00000002").is_dir() and process.poll() is None:
        assert time.time() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    resumed = train(load_recipe(recipe, [*steps, f"run.output_dir='{killed_dir}'"]))
    assert 0 < len(resumed.losses) < 8, "the killed run must have been stopped before its end"
    logged = read_metrics(killed_dir)
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert [r["loss"] for r in logged] == pytest.approx(reference, rel=0, abs=1e-6)
    assert resumed.losses == reference[-len(resumed.losses):]  # bitwise


def test_time_budget_stops_saves_exports_and_the_same_command_continues_exactly(tmp_path):
    """With its minutes spent a run checkpoints and exports where it is; rerun, it picks up that step."""
    recipe = sft_recipe(tmp_path, extra='stage = "dit"\nema_decay = 0.9', name="a.toml")
    steps = ["run.max_steps=5", "run.save_every=0"]
    reference = train(load_recipe(recipe, [*steps, f"run.output_dir='{tmp_path / 'ref'}'"])).losses

    budgeted = [*steps, f"run.output_dir='{tmp_path / 'budget'}'", "run.max_minutes=1e-9"]  # spent after a step
    pieces = [train(load_recipe(recipe, budgeted)) for _ in range(5)]
    assert [piece.step for piece in pieces] == [1, 2, 3, 4, 5]
    assert [loss for piece in pieces for loss in piece.losses] == reference  # bitwise
    assert [r["step"] for r in read_metrics(tmp_path / "budget")] == [1, 2, 3, 4, 5]
    assert (tmp_path / "budget" / "final" / "transformer").is_dir()


def test_two_processes_stay_in_sync_and_match_one_process(tmp_path):
    recipe = sft_recipe(tmp_path, extra='stage = "dit"')
    steps = ["run.max_steps=3", "run.save_every=0"]
    single = train(load_recipe(recipe, [*steps, "data.micro_batch_size=4"])).losses

    overrides = [*steps, "data.micro_batch_size=2", f"run.output_dir='{tmp_path / 'ddp'}'"]
    report = run_two_processes(tmp_path, "ddp", SFT_IMPORTS + f"""
result = train(load_recipe({str(recipe)!r}, {overrides!r}))
report = {{"losses": result.losses, "in_sync": same_on_every_rank(result.model.parameters()),
          "world_size": dist.get_world_size()}}
del result
""")
    assert report["world_size"] == 2 and report["in_sync"]
    assert report["losses"] == pytest.approx(single, rel=1e-5)


def test_a_deepspeed_launcher_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """`accelerate launch` with a DeepSpeed config would wrap the model whatever the recipe says; the run stops
    with the way to shard instead (FSDP), not at accelerate's "DeepSpeed is not installed"."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    config = load_recipe(sft_recipe(tmp_path))
    with pytest.raises(ValueError, match=r'DeepSpeed .*distributed.strategy = "fsdp"'):
        train(config)
    assert not (tmp_path / "run").exists()


def test_fsdp_shards_matches_one_process_and_resumes_exactly(tmp_path):
    """``distributed.strategy = 'fsdp'``: each process holds half of every sharded weight, the losses are one
    process's, and a run stopped after a checkpoint resumes under FSDP to the uninterrupted losses."""
    recipe = sft_recipe(tmp_path, extra='stage = "dit"\n[distributed]\nstrategy = "fsdp"\n')
    single = train(load_recipe(recipe, ["run.max_steps=4", "run.save_every=0", "data.micro_batch_size=4",
                                        "distributed.strategy='auto'"]))
    out = tmp_path / "fsdp"
    common = ["run.save_every=2", "data.micro_batch_size=2", f"run.output_dir='{out}'"]
    report = run_two_processes(tmp_path, "fsdp", SFT_IMPORTS + f"""
from torch.distributed.tensor import DTensor
first = train(load_recipe({str(recipe)!r}, {[*common, "run.max_steps=2"]!r}))
weights = [p for p in first.model.parameters() if isinstance(p, DTensor)]
sharded = bool(weights) and all(2 * p.to_local().shape[0] >= p.shape[0] > p.to_local().shape[0] for p in weights
                                if p.shape[0] > 1)
rest = train(load_recipe({str(recipe)!r}, {[*common, "run.max_steps=4"]!r}))
report = {{"sharded": sharded, "num_sharded": len(weights), "total": len(list(first.model.parameters())),
          "losses": first.losses + rest.losses}}
del first, rest, weights
""")
    assert report["sharded"] and report["num_sharded"] == report["total"]
    assert report["losses"] == pytest.approx(single.losses, rel=1e-5)
    exported = ThinkGenTransformer2DModel.from_pretrained(out / "final" / "transformer")
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], tensor, rtol=1e-4, atol=1e-6)


def test_one_process_out_of_time_stops_every_process_at_the_same_step(tmp_path):
    """Clocks differ between processes: the first to pass the budget decides, and all save that step."""
    recipe = sft_recipe(tmp_path, extra='stage = "dit"')
    out = tmp_path / "budget"
    overrides = ["run.max_steps=6", "run.save_every=0", "run.max_minutes=60", "data.micro_batch_size=2",
                 f"run.output_dir='{out}'"]
    report = run_two_processes(tmp_path, "budget", SFT_IMPORTS + f"""
from thinkgen.train import run
checks = []
run.TimeBudget.spent = lambda self: checks.append(1) or (dist.get_rank() == 1 and len(checks) >= 2)
step = train(load_recipe({str(recipe)!r}, {overrides!r})).step
steps = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
dist.all_gather(steps, torch.tensor([step]))
report = {{"steps": [int(s) for s in steps]}}
""")
    assert report["steps"] == [2, 2]  # rank 1's clock ran out in step 2; rank 0's never did
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]


def test_lora_ema_checkpointing_edits_samples_and_tensorboard(tmp_path):
    extra = """stage = "finetune"
lora_rank = 4
ema_decay = 0.9
gradient_checkpointing = true
[flow]
ref_dropout = 0.0
[sample]
prompts = ["one red circle"]
num_inference_steps = 2
"""
    recipe = sft_recipe(tmp_path, extra=extra, sources='[[data.sources]]\nscenarios = ["edit"]\n')
    result = train(load_recipe(recipe, ["run.max_steps=2", "run.sample_every=2", "run.use_tensorboard=true"]))
    run = tmp_path / "run"
    exported = ThinkGenTransformer2DModel.from_pretrained(run / "final" / "transformer")
    assert set(exported.state_dict()) == set(_tiny_dit().state_dict())  # adapters merged away
    assert (run / "samples" / "step_00000002.png").is_file()
    assert json.loads((run / "samples" / "step_00000002.json").read_text())["prompts"] == ["one red circle"]
    assert any((run / "tensorboard").iterdir())
    from safetensors.torch import load_file

    trained = load_file(run / "checkpoints" / "step_00000002" / "model.safetensors")
    # Only the adapters learn and are saved (with the model's buffers).
    assert trained and all("lora_" in name or name.endswith("prepad_mask") for name in trained)
    assert result.step == 2


def test_broken_samples_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "data", [{"instruction": f"colour {i}"} for i in range(8)])
    recipe = sft_recipe(tmp_path, sources=f'[[data.sources]]\nkind = "jsonl"\npath = "{path}"\n')
    # Valid when checked, unreadable when loaded: a file corrupted mid-run.
    (path.parent / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = train(load_recipe(recipe, ["run.max_steps=4", "data.num_workers=1"]))
    assert len(result.losses) == 4 and all(loss == loss for loss in result.losses)
    assert read_metrics(tmp_path / "run")[-1]["skipped"] >= 1


def test_ema_warms_up_then_settles_and_its_state_round_trips():
    from thinkgen.train.sft import EMA

    model = torch.nn.Linear(2, 1, bias=False)
    initial = model.weight.detach().clone()
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()  # first update: decay min(0.999, 1/10) = 0.1, so the average moves 90 % of the way
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * initial + 0.9)
    for _ in range(8999):  # (1 + n) / (10 + n) reaches 0.999 at n = 8991
        ema.update()
    assert ema.current_decay == 0.999
    torch.testing.assert_close(ema.shadow["weight"], torch.ones(1, 2))
    restored = EMA(model, decay=0.999)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == ema.num_updates == 9000
    torch.testing.assert_close(restored.shadow["weight"], ema.shadow["weight"])
    # A state written before the warm-up existed (the shadow alone) loads as an average long past it.
    legacy = EMA(model, decay=0.999)
    legacy.load_state_dict(dict(ema.shadow))
    assert legacy.current_decay == 0.999


def test_references_encode_batched_by_size_as_one_by_one():
    """One codec call per reference size gives each sample the latents it would get alone, in order."""
    import numpy as np
    from PIL import Image

    from thinkgen.imageio import pil_to_tensor
    from thinkgen.models.nano_autoencoder import NanoAutoencoder
    from thinkgen.train.sft import encode_references
    from thinkgen.world.scene import BACKGROUND_RGB, COLOURS

    torch.manual_seed(0)
    codec = NanoAutoencoder(palette=[list(COLOURS[c]) for c in ("red", "blue")], background=list(BACKGROUND_RGB),
                            latent_channels=3, downscale_factor=4, base_channels=8).eval()
    rng = np.random.default_rng(0)

    def image(width: int, height: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    refs = [[image(16, 16), image(32, 16)], [], [image(16, 16)]]
    latents = encode_references(refs, codec, torch.device("cpu"))
    assert latents[1] is None
    for images, encoded in zip([refs[0], refs[2]], [latents[0], latents[2]]):
        assert len(encoded) == len(images)
        for picture, latent in zip(images, encoded):
            torch.testing.assert_close(latent, codec.encode(pil_to_tensor([picture]))[0].float())
