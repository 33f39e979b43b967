"""ThinkGenPipeline end to end on a tiny random model: every scenario, save/load, bad input."""

import json

import pytest
import torch
from PIL import Image

from thinkgen.models.mllm import ThinkingConfig
from thinkgen.pipeline import PipelineConfig, ThinkGenPipeline
from tiny_pipeline import FAST_THINKING, build_tiny_pipeline, tiny_dit


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def test_text_to_image_returns_images_text_timings_and_counts(pipe):
    out = pipe(["a red circle", "two blue squares"], num_images_per_prompt=2, seed=0)
    assert len(out.images) == 4 and out.images[0].size == (16, 16)
    assert out.instruction == ["a red circle", "two blue squares"] and out.reasoning == ["", ""]
    assert out.thought == [False, False]
    assert set(out.timings) == {"thinking", "denoising", "decode"}
    # No-think: one MLLM forward for the prompts and one for the negative prompt is not counted here.
    assert out.token_counts["forward_calls"] == 1 and out.token_counts["instruction"] > 0


def test_same_seed_same_images_and_text(pipe):
    a = pipe("three stars", think=True, seed=3, thinking=FAST_THINKING)
    b = pipe("three stars", think=True, seed=3, thinking=FAST_THINKING)
    c = pipe("three stars", think=True, seed=4, thinking=FAST_THINKING)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.reasoning, a.instruction) == (b.reasoning, b.instruction)
    assert a.images[0].tobytes() != c.images[0].tobytes()
    assert a.thought == [True]
    # Prefill + one forward per generated token but the last, as the MLLM counts them.
    assert a.token_counts["forward_calls"] == a.token_counts["generated"]


def test_the_negative_prompt_goes_through_the_no_think_template_and_steers_the_image(pipe):
    states, mask = pipe.encode_negative("blurry, deformed", batch=2)
    alone = pipe.mllm.encode_prompt(["blurry, deformed"], think=False)
    assert states.shape[0] == 2 and torch.equal(states[1], alone.instruction_states[0])
    assert torch.equal(mask[0], alone.instruction_mask[0])
    images = {
        negative: pipe("a red circle", seed=3, guidance_scale=4.0, negative_prompt=negative, output_type="pt").images
        for negative in ("blurry", "three green stars")
    }
    assert not torch.equal(images["blurry"], images["three green stars"])
    default = pipe("a red circle", seed=3, guidance_scale=4.0, output_type="pt").images
    torch.testing.assert_close(default, images["blurry"], rtol=0, atol=0)  # the fixture's config says "blurry"


def test_editing_keeps_the_input_size_and_uses_the_image(pipe):
    red = Image.new("RGB", (24, 16), (255, 0, 0))
    blue = Image.new("RGB", (24, 16), (0, 0, 255))
    a = pipe.edit(red, "make it green", seed=1, output_type="pt")
    b = pipe.edit(blue, "make it green", seed=1, output_type="pt")
    assert a.images.shape == (1, 3, 16, 24)
    assert not torch.allclose(a.images, b.images)


def test_in_context_generation_takes_up_to_five_images(pipe):
    refs = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(5)]
    assert len(pipe("combine them", images=refs, seed=0).images) == 1
    with pytest.raises(ValueError, match="at most 5"):
        pipe("combine them", images=refs + refs[:1])


def test_think_auto_follows_the_models_probability(pipe):
    never = PipelineConfig(**{**pipe.config.__dict__, "think_auto_threshold": 0.0})
    always = PipelineConfig(**{**pipe.config.__dict__, "think_auto_threshold": 1.01})
    p = pipe.mllm.think_end_probability(["a red circle"])
    assert p.shape == (1,) and 0 <= float(p) <= 1
    for config, expected in ((never, False), (always, True)):
        auto = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.codec, config)
        out = auto("a red circle", think="auto", seed=0, thinking=FAST_THINKING)
        assert out.thought == [expected]


def test_reflect_stops_on_the_match_verdict(pipe, monkeypatch):
    verdicts = iter(["add one red circle", pipe.config.match_verdict])
    real = pipe.encode_prompt

    def scripted(prompts, images, thinks, thinking=None, streamer=None):
        states, mask, reasoning, instruction, counts = real(prompts, images, thinks, thinking, streamer)
        if prompts[0].startswith("The prompt was: one red circle"):  # a critique pass, not the first drawing
            instruction = [next(verdicts)]
        return states, mask, reasoning, instruction, counts

    monkeypatch.setattr(pipe, "encode_prompt", scripted)
    closing_at_once = ThinkingConfig(max_thinking_tokens=0, max_instruction_tokens=4)
    out = pipe.reflect("one red circle", rounds=4, seed=0, thinking=closing_at_once)
    assert [r.instruction for r in out.rounds[1:]] == ["add one red circle"]
    assert out.rounds[-1].matches and len(out.rounds) == 2
    assert out.image is out.rounds[-1].image


def test_save_and_reload_gives_identical_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    for part in ("model_index.json", "transformer", "vae", "scheduler", "mllm", "processor"):
        assert (tmp_path / "model" / part).exists()
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pt"))
    loaded = ThinkGenPipeline.from_pretrained(tmp_path / "model")
    assert loaded.config == pipe.config
    a = pipe("a red circle", seed=5, output_type="pt").images
    b = loaded("a red circle", seed=5, output_type="pt").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _stored_dtypes(folder):
    from safetensors import safe_open

    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return dtypes


def _weights_bytes(folder):
    return sum(f.stat().st_size for part in ("transformer", "mllm") for f in (folder / part).glob("*.safetensors"))


def test_a_half_precision_folder_is_half_the_size_and_loads_in_float32(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "fp32")
    pipe.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    assert next(pipe.transformer.parameters()).dtype == torch.float32, "saving must not change the model"
    assert next(pipe.mllm.model.parameters()).dtype == torch.float32
    for part in ("transformer", "mllm"):
        stored = _stored_dtypes(tmp_path / "fp16" / part)
        assert "F16" in stored and not stored & {"F32", "BF16", "F64"}, stored  # integer buffers stay
    assert _weights_bytes(tmp_path / "fp16") < 0.55 * _weights_bytes(tmp_path / "fp32")

    half = ThinkGenPipeline.from_pretrained(tmp_path / "fp16")
    assert {p.dtype for p in half.transformer.parameters()} == {torch.float32}
    assert {p.dtype for p in half.mllm.model.parameters()} == {torch.float32}
    # The upcast weights are the float32 ones rounded through float16, so the outputs equal those of the
    # float32 model with its weights rounded the same way.
    rounded = ThinkGenPipeline.from_pretrained(tmp_path / "fp32")
    with torch.no_grad():
        for p in [*rounded.transformer.parameters(), *rounded.mllm.model.parameters()]:
            p.copy_(p.half().float())
    a = half("a red circle", seed=5, output_type="pt")
    b = rounded("a red circle", seed=5, output_type="pt")
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert a.instruction == b.instruction


def test_a_sharded_dit_folder_reloads_identically(pipe, tmp_path):
    from thinkgen.pipeline import load_transformer, save_transformer

    save_transformer(pipe.transformer, tmp_path / "dit", max_shard_size="20KB")
    assert len(list((tmp_path / "dit").glob("*.safetensors"))) > 1
    assert (tmp_path / "dit" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = load_transformer(tmp_path / "dit")
    for name, value in pipe.transformer.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    save_transformer(pipe.transformer, tmp_path / "dit")  # re-saved whole: no stale shards are left
    assert [f.name for f in (tmp_path / "dit").glob("*.safetensors")] == ["diffusion_pytorch_model.safetensors"]
    assert not (tmp_path / "dit" / "diffusion_pytorch_model.safetensors.index.json").exists()


def test_load_pipeline_names_the_allowed_dtypes():
    from thinkgen.pipeline import load_pipeline

    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        load_pipeline("nano", "cpu", "int8")


def test_loading_refuses_missing_or_misshaped_weights(pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    pipe.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["x_embedder.bias"] = torch.zeros(7)
    del state["prepad_embed"]
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"missing \['prepad_embed'\].*x_embedder.bias"):
        ThinkGenPipeline.from_pretrained(tmp_path / "model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match="transformer"):
        ThinkGenPipeline.from_pretrained(tmp_path / "broken")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "non-empty"),
        ({"prompt": "x" * 5000}, "5000 characters"),
        ({"height": 15}, "multiple of 2"),
        ({"height": 4096, "width": 4096}, "pixels; the limit"),
        ({"num_inference_steps": 0}, "num_inference_steps=0"),
        ({"guidance_scale": 100.0}, "guidance_scale=100.0"),
        ({"cfg_range": (0.8, 0.2)}, "cfg_range"),
        ({"think": "maybe"}, "think='maybe'"),
    ],
)
def test_bad_input_is_named(pipe, kwargs, message):
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_huge_input_images_are_refused(pipe):
    with pytest.raises(ValueError, match="limit"):
        pipe.edit(Image.new("RGB", (4200, 4200)), "make it red")


def test_understand_answers_in_text(pipe):
    answer = pipe.understand([Image.new("RGB", (16, 16), "red")], "what colour is it?", FAST_THINKING)
    assert isinstance(answer, str)


def test_cli_generate_edit_reflect_write_png_and_sidecar(pipe, tmp_path, capsys):
    from thinkgen.cli import main

    pipe.save_pretrained(tmp_path / "model")
    model = str(tmp_path / "model")
    assert main(["generate", "a red circle", "--model", model, "-n", "2", "--seed", "7", "--out", str(tmp_path / "g")]) == 0
    written = sorted((tmp_path / "g").glob("*.png"))
    assert len(written) == 2
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert meta["prompt"] == "a red circle" and meta["seed"] == 7 and set(meta["timings_s"]) >= {"denoising"}

    assert main(["edit", str(written[0]), "make it blue", "--model", model, "--out", str(tmp_path / "e")]) == 0
    assert Image.open(next((tmp_path / "e").glob("*.png"))).size == (16, 16)

    capsys.readouterr()
    assert main(["generate", "x", "--model", model, "--think", "--max-thinking-tokens", "3",
                 "--out", str(tmp_path / "t")]) == 0
    # The thought is streamed to the terminal (stderr) as it is generated; the sidecar keeps it too.
    thought = json.loads(next((tmp_path / "t").glob("*.json")).read_text())["reasoning"].strip()
    assert thought and thought in capsys.readouterr().err
    assert main(["reflect", "a red circle", "--model", model, "--rounds", "1", "--max-thinking-tokens", "0",
                 "--out", str(tmp_path / "r")]) == 0
    assert list((tmp_path / "r").glob("reflect_*round0.png"))


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    from thinkgen.cli import main

    assert main(["generate", "a red circle", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a ThinkGen model folder" in err and "Traceback" not in err
    # Input errors are named before the model is loaded: the model folder here does not even exist.
    missing_model = str(tmp_path / "no_model")
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    for argv, message in (
        (["generate", "  "], "the prompt is empty"),
        (["edit", *[str(tmp_path / "in.png")] * 6, "recolour it"], "6 input images given; at most 5"),
        (["edit", str(tmp_path / "gone.png"), "recolour it"], "gone.png"),
    ):
        assert main([*argv, "--model", missing_model]) == 2
        assert message in capsys.readouterr().err


def test_lora_adapter_loads_into_the_dit_and_changes_the_output(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_pipeline()
    before = base("a red circle", seed=2, output_type="pt").images
    # An adapter as PEFT writes it, with non-zero B so it changes the model.
    tuned = get_peft_model(tiny_dit(base.mllm.hidden_size), LoraConfig(r=4, target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    tuned.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    base.load_lora_weights(tmp_path / "adapter")
    after = base("a red circle", seed=2, output_type="pt").images
    assert not torch.allclose(before, after)
    reference = ThinkGenPipeline(base.mllm, tuned.eval(), base.codec, base.config)
    torch.testing.assert_close(after, reference("a red circle", seed=2, output_type="pt").images)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        base.load_lora_weights(tmp_path / "nowhere")


def test_sampler_uses_the_models_time_shift_reference(pipe, tmp_path):
    """The reference travels with the model folder and changes the time grid the DiT is run on."""
    steps = []

    def record(module, args):
        steps.append(float(args[1][0]))  # forward(hidden_states, timestep, ...)

    shifted = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.codec,
                               PipelineConfig(**{**pipe.config.__dict__, "time_shift_reference_side": 16.0}))
    shifted.save_pretrained(tmp_path / "m")
    reloaded = ThinkGenPipeline.from_pretrained(tmp_path / "m")
    assert reloaded.config.time_shift_reference_side == 16.0
    handle = reloaded.transformer.register_forward_pre_hook(record)
    try:
        reloaded("a red circle", seed=0, guidance_scale=1.0)
    finally:
        handle.remove()
    assert steps == pytest.approx([0.0, 1 / 3, 2 / 3])  # 16 px latents at reference 16: no shift


def test_the_pipeline_asks_its_mllm_for_the_layers_its_dit_reads():
    pipe = build_tiny_pipeline()
    assert pipe.mllm.caption_layers == "last_two"
    dit = tiny_dit(pipe.mllm.hidden_size, caption_layers="embedding_and_last")
    paired = ThinkGenPipeline(pipe.mllm, dit, pipe.codec, pipe.config)
    assert paired.mllm.caption_layers == "embedding_and_last"


def test_guidance_batching_setting_reaches_the_sampler(pipe):
    """One DiT call per branch ("none") draws the same image as the default, with twice the calls."""
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        grouped = pipe("a red circle", seed=0, guidance_scale=3.0, output_type="pt").images
        grouped_calls, calls[:] = list(calls), []
        each = ThinkGenPipeline(pipe.mllm, pipe.transformer, pipe.codec,
                                PipelineConfig(**{**pipe.config.__dict__, "guidance_batching": "none"}))
        separate = each("a red circle", seed=0, guidance_scale=3.0, output_type="pt").images
    finally:
        handle.remove()
    assert set(grouped_calls) == {2} and set(calls) == {1} and len(calls) == 2 * len(grouped_calls)
    torch.testing.assert_close(grouped, separate, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="guidance_batching='padded' is not one of by_length, all, none"):
        PipelineConfig(guidance_batching="padded")
