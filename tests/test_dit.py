"""The ThinkGen DiT: released state-dict layout, released outputs, masking, prepadding, checkpointing."""

import json
import re

import pytest
import torch
from dit_oracle import FIXTURES, load_oracle, oracle_model, velocity

from thinkgen.models.dit import ThinkGenTransformer2DModel


def test_state_dict_matches_released_4b_layout():
    lines = (FIXTURES / "thinkgen_dit_4b_state_dict.txt").read_text().splitlines()
    config_line = next(line for line in lines if line.startswith("# config:"))
    config = {}
    for key, value in re.findall(r"(\w+)=(\([^)]*\)|\S+)", config_line.removeprefix("# config:")):
        config[key] = tuple(int(v) for v in value.strip("()").split(",")) if value.startswith("(") else float(value)
    config = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in config.items()}
    expected = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, rest = line.split(" ", 1)
            shape, dtype = rest.rsplit(" ", 1)
            expected[key] = (tuple(int(d) for d in re.findall(r"\d+", shape)), dtype)

    with torch.device("meta"):
        model = ThinkGenTransformer2DModel(**config)
    ours = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}
    total = sum(v.numel() for v in model.state_dict().values())
    assert total == 3_982_838_863


@pytest.mark.parametrize("case", ["t2i_batch2_padded", "edit_one_ref"])
def test_reproduces_released_outputs(case):
    meta, t = load_oracle(case)
    model = oracle_model(case)
    refs = None
    if json.loads(meta["ref_layout"]) is not None:
        layout = json.loads(meta["ref_layout"])  # per sample, the (h, w) of each reference
        refs = [[t[f"input.ref.{i}.{j}"] for j in range(len(sizes))] for i, sizes in enumerate(layout)]
    out = velocity(model, t["input.latents"], t["input.timestep"], t["input.text_hidden_states"],
                   t["input.text_attention_mask"], refs)
    torch.testing.assert_close(out, t["output.velocity"], rtol=1e-4, atol=1e-4)


def _random_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 9, 48, generator=g)
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0, :9], mask[1, :3] = 1, 1
    refs = [
        [torch.randn(4, 6, 10, generator=g), torch.randn(4, 8, 4, generator=g)],  # two refs, own sizes
        [torch.randn(4, 4, 4, generator=g)],
    ]
    return latents, torch.tensor([0.3, 0.8]), text, mask, refs


def test_sample_output_does_not_depend_on_other_samples_or_padding():
    model = oracle_model()
    latents, t, text, mask, refs = _random_inputs()
    batched = velocity(model, latents, t, text, mask, refs)
    for i in range(2):
        valid = int(mask[i].sum())
        alone = velocity(model, latents[i : i + 1], t[i : i + 1], text[i : i + 1, :valid], mask[i : i + 1, :valid],
                         [refs[i]])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    # Padded text content is ignored.
    noisy_pad = text.clone()
    noisy_pad[1, 3:] = 100.0
    torch.testing.assert_close(velocity(model, latents, t, noisy_pad, mask, refs), batched, rtol=1e-5, atol=1e-5)


def test_reference_images_condition_the_output_by_content_and_slot():
    model = oracle_model()
    latents, t, text, mask, refs = _random_inputs()
    base = velocity(model, latents, t, text, mask, refs)
    no_refs = velocity(model, latents, t, text, mask, [refs[0], None])
    swapped = velocity(model, latents, t, text, mask, [refs[0][::-1], refs[1]])
    torch.testing.assert_close(no_refs[0], base[0], rtol=1e-5, atol=1e-5)
    assert (no_refs[1] - base[1]).abs().max() > 1e-2
    assert (swapped[0] - base[0]).abs().max() > 1e-2  # the order of reference images matters


def test_prepadding_is_prepended_text():
    """K = 0 works, and K states prepended by hand to a K = 0 model give the K = 23 model's output."""
    with_prepad = oracle_model()
    without = oracle_model(num_prepad_states=0)
    assert without.prepad_embed.shape == (1, 0, 48)
    latents, t, text, mask, refs = _random_inputs()
    expected = velocity(with_prepad, latents, t, text, mask, refs)
    prepad = with_prepad.prepad_embed.detach().expand(2, -1, -1)
    manual = velocity(without, latents, t, torch.cat([prepad, text], 1),
                      torch.cat([torch.ones(2, 23, dtype=torch.long), mask], 1), refs)
    torch.testing.assert_close(manual, expected, rtol=1e-5, atol=1e-5)
    assert velocity(without, latents, t, text, mask, refs).shape == latents.shape


def test_last_layer_ablation_reads_only_the_last_layer_half():
    """caption_layers="last": the hidden_states[-2] half is ignored, the hidden_states[-1] half is not."""
    model = oracle_model(caption_layers="last")
    half = model.config.text_feat_dim
    latents, t, text, mask, refs = _random_inputs()
    base = velocity(model, latents, t, text, mask, refs)
    other_second_to_last = text.clone()
    other_second_to_last[..., :half] = torch.randn_like(text[..., :half])
    torch.testing.assert_close(velocity(model, latents, t, other_second_to_last, mask, refs), base)
    other_last = text.clone()
    other_last[..., half:] = torch.randn_like(text[..., half:])
    assert (velocity(model, latents, t, other_last, mask, refs) - base).abs().max() > 1e-2
    # The same weights reading both layers (released) do depend on hidden_states[-2].
    both = oracle_model()
    both.load_state_dict(model.state_dict())
    assert (velocity(both, latents, t, other_second_to_last, mask, refs) - velocity(both, latents, t, text, mask, refs)
            ).abs().max() > 1e-2
    with pytest.raises(ValueError, match="caption_layers"):
        oracle_model(caption_layers="first")


def test_gradient_checkpointing_gives_the_same_gradients():
    latents, t, text, mask, refs = _random_inputs()
    grads = []
    for use_checkpointing in (False, True):
        model = oracle_model().train()
        if use_checkpointing:
            model.enable_gradient_checkpointing()
        model(latents, t, text, mask, refs).sample.square().mean().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0]["ref_image_refiner.0.attn.to_q.weight"].abs().sum() > 0
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=1e-5, atol=1e-6, msg=key)


def test_run_all_blocks_differentiates_the_reference_path_without_changing_the_output():
    """Sharded training: a batch without references still gives every reference weight a (zero) gradient."""
    latents, t, text, mask, _ = _random_inputs()
    outputs, grads = [], []
    for run_all in (False, True):
        model = oracle_model().train()
        model.run_all_blocks = run_all
        out = model(latents, t, text, mask).sample
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert torch.equal(outputs[0], outputs[1])
    reference_path = [k for k in grads[0] if k.startswith(("ref_image_", "image_index_embedding"))]
    assert reference_path and all(grads[0][k] is None for k in reference_path)
    assert all(grads[1][k] is not None and not grads[1][k].any() for k in reference_path)
    assert all(grads[1][k] is not None for k in grads[1])


def test_deepened_model_computes_the_same_and_its_copies_learn():
    model = oracle_model()
    deeper = model.deepened(3)
    assert deeper.config.num_layers == 3 * model.config.num_layers
    inputs = _random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(deeper(*inputs).sample, model(*inputs).sample, rtol=1e-5, atol=1e-5)
    deeper(*inputs).sample.square().mean().backward()
    assert deeper.layers[1].norm1.linear.weight.grad.abs().sum() > 0  # a copy's closed gates open
    with pytest.raises(ValueError, match="factor must be >= 1"):
        model.deepened(0)


def test_save_and_load_round_trip(tmp_path):
    model = oracle_model()
    model.save_pretrained(tmp_path)
    loaded = ThinkGenTransformer2DModel.from_pretrained(tmp_path)
    assert loaded.config.num_prepad_states == 23 and list(loaded.config.axes_dim_rope) == [4, 6, 6]
    latents, t, text, mask, refs = _random_inputs()
    torch.testing.assert_close(velocity(loaded, latents, t, text, mask, refs),
                               velocity(model, latents, t, text, mask, refs))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(mask=torch.tensor([[0] + [1] * 8] * 2)), "right-padded"),
        (lambda a: a.update(refs=[[torch.zeros(4, 4, 4)] * 6, None]), "at most 5"),
        (lambda a: a.update(refs=[[torch.zeros(4, 5, 4)], None]), "multiples of 2"),
        (lambda a: a.update(text=torch.zeros(2, 9, 40)), "2\\*text_feat_dim"),
        (lambda a: a.update(refs=[[torch.zeros(4, 2, 130)], None]), "axes_lens"),  # 65 columns, 64 allowed
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    model = oracle_model()
    latents, t, text, mask, refs = _random_inputs()
    args = {"text": text, "mask": mask, "refs": refs}
    change(args)
    with pytest.raises(ValueError, match=message):
        velocity(model, latents, t, args["text"], args["mask"], args["refs"])
