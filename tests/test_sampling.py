"""Flow sampling: shifted timesteps, guided Euler loop vs the released sampler, batching, SDE log-prob."""

import math
from types import SimpleNamespace

import pytest
import torch
from dit_oracle import load_oracle, oracle_model

from thinkgen.sampling import (
    build_guidance_conditions,
    euler_step,
    flow_timesteps,
    guided_velocity,
    sample_latents,
    sde_step_with_logprob,
    time_shift_factor,
)


def test_timesteps_match_released_schedule():
    _, t = load_oracle("sample_t2i_cfg4_6steps")
    grid = flow_timesteps(6, 8, 8)
    torch.testing.assert_close(grid[:-1], t["output.timesteps"])
    assert grid[-1] == 1.0
    assert time_shift_factor(128, 128) == pytest.approx(3.2)  # 1024² pixels
    assert torch.all(flow_timesteps(50, 128, 128).diff() > 0)


def test_time_shift_reference_side_sets_where_the_grid_is_unshifted():
    # At its reference size the grid is the plain linspace; below it, the steps crowd towards the data end.
    torch.testing.assert_close(flow_timesteps(4, 16, 16, shift_reference_side=16.0),
                               torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    released = flow_timesteps(4, 16, 16)  # m = 0.4 with the released reference 40
    assert released[1] > 0.25 and time_shift_factor(16, 16) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="reference_side"):
        time_shift_factor(16, 16, 0.0)


@pytest.mark.parametrize("guidance_batching", ["by_length", "all", "none"])
def test_guided_euler_sampling_matches_released_sampler(guidance_batching):
    meta, t = load_oracle("sample_t2i_cfg4_6steps")
    model = oracle_model("sample_t2i_cfg4_6steps")
    out = sample_latents(
        model, t["input.initial_latents"], t["input.prompt_embeds"], t["input.prompt_attention_mask"],
        t["input.negative_prompt_embeds"], t["input.negative_prompt_attention_mask"],
        num_inference_steps=int(meta["num_inference_steps"]), guidance_scale=float(meta["text_guidance_scale"]),
        image_guidance_scale=float(meta["image_guidance_scale"]), guidance_batching=guidance_batching,
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, t["output.final_latents"], rtol=1e-4, atol=1e-4)


def _edit_inputs():
    g = torch.Generator().manual_seed(1)
    refs = [[torch.randn(4, 8, 6, generator=g)], [torch.randn(4, 4, 8, generator=g), torch.randn(4, 6, 6, generator=g)]]
    prompt_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    return dict(
        latents=torch.randn(2, 4, 8, 8, generator=g), prompt_embeds=torch.randn(2, 5, 48, generator=g),
        prompt_attention_mask=prompt_mask, negative_prompt_embeds=torch.randn(2, 2, 48, generator=g),
        negative_prompt_attention_mask=torch.ones(2, 2, dtype=torch.long), ref_latents=refs,
    )


def _dit_batch_sizes(model, **kwargs) -> tuple[list[int], torch.Tensor]:
    batch_sizes = []
    hook = model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    out = sample_latents(model, **_edit_inputs(), num_inference_steps=4, guidance_scale=4.0,
                         image_guidance_scale=2.0, cfg_range=(0.0, 0.5), **kwargs)
    hook.remove()
    return batch_sizes, out


def test_guidance_branches_of_equal_length_share_one_dit_call():
    model = oracle_model()
    # Steps 0–2 (i/N ≤ 0.5) guide: c and r carry the same references and stack (2·B); u has none and runs on
    # its own rather than padded to their length. Step 3 runs c alone.
    by_length, by_length_out = _dit_batch_sizes(model)
    assert by_length == [4, 2, 4, 2, 4, 2, 2]
    every, every_out = _dit_batch_sizes(model, guidance_batching="all")
    assert every == [6, 6, 6, 2]
    each, each_out = _dit_batch_sizes(model, guidance_batching="none")
    assert each == [2] * 10
    # Equal up to float round-off (amplified by the guidance scales).
    torch.testing.assert_close(by_length_out, each_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(every_out, each_out, rtol=1e-4, atol=1e-4)
    # Text guidance alone: both branches carry no references and stack.
    inputs = _edit_inputs()
    inputs["ref_latents"] = None
    batch_sizes = []
    model.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    sample_latents(model, **inputs, num_inference_steps=2, guidance_scale=4.0)
    assert batch_sizes == [4, 4]


def test_unknown_guidance_batching_is_named():
    with pytest.raises(ValueError, match="guidance_batching='some'.*by_length, all, none"):
        _dit_batch_sizes(oracle_model(), guidance_batching="some")


def test_guidance_combines_branches_as_released():
    """A stub DiT whose velocity is the first text feature, plus 1 when it sees reference images."""

    def stub(latents, timestep, text, mask, refs):
        seen = torch.tensor([1.0 if refs is not None and refs[i] else 0.0 for i in range(len(latents))])
        return SimpleNamespace(sample=(text[:, 0, 0] + seen)[:, None, None, None].expand_as(latents))

    inputs = _edit_inputs()
    latents = inputs.pop("latents")
    conditions = build_guidance_conditions(**inputs)
    c = inputs["prompt_embeds"][:, 0, 0]
    n = inputs["negative_prompt_embeds"][:, 0, 0]
    both = guided_velocity(stub, latents, 0.5, conditions, guidance_scale=4.0, image_guidance_scale=2.0)
    # u + s_i (r − u) + s_t (c − r) with c = pc + 1, r = pn + 1, u = pn.
    torch.testing.assert_close(both[:, 0, 0, 0], n + 2.0 * 1 + 4.0 * (c - n))
    text_only = guided_velocity(stub, latents, 0.5, conditions, guidance_scale=4.0, image_guidance_scale=1.0)
    torch.testing.assert_close(text_only[:, 0, 0, 0], n + 4.0 * (c + 1 - n))  # u + s_t (c − u)
    off = guided_velocity(stub, latents, 0.5, conditions, guidance_scale=1.0, image_guidance_scale=1.0)
    torch.testing.assert_close(off[:, 0, 0, 0], c + 1)


def _flow_grpo_mean_std(x, v, t, t_next, a):
    """Flow-GRPO's step written in its own convention: σ = 1 − t noise time, v_σ = −v."""
    sigma, sigma_next = 1 - t, 1 - t_next
    v_sigma, d_sigma = -v, sigma_next - sigma
    std_s = a * math.sqrt(sigma / (1 - sigma))
    mean = x + (v_sigma + std_s**2 / (2 * sigma) * (x + (1 - sigma) * v_sigma)) * d_sigma
    return mean, std_s * math.sqrt(-d_sigma)


def test_sde_step_is_flow_grpo_step_and_gaussian_log_density():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    out = sde_step_with_logprob(x, v, 0.4, 0.55, noise_level=0.7, generator=g)
    mean, std = _flow_grpo_mean_std(x, v, 0.4, 0.55, 0.7)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.std.flatten(), torch.full((3,), std))
    expected = torch.distributions.Normal(mean, std).log_prob(out.latents).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.log_prob, expected)
    # Re-evaluating recorded latents gives the same log-prob, differentiable through the mean.
    v_new = v.clone().requires_grad_()
    again = sde_step_with_logprob(x, v_new, 0.4, 0.55, noise_level=0.7, next_latents=out.latents)
    torch.testing.assert_close(again.log_prob, out.log_prob)
    again.log_prob.sum().backward()
    assert v_new.grad.abs().sum() > 0
    # A sample far from the mean is less likely.
    far = sde_step_with_logprob(x, v, 0.4, 0.55, noise_level=0.7, next_latents=out.mean + 5 * out.std)
    assert torch.all(far.log_prob < out.log_prob)


def test_sde_step_tends_to_euler_step_and_handles_pure_noise():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    euler = euler_step(x, v, 0.3, 0.5)
    for a in (1e-2, 1e-4):
        out = sde_step_with_logprob(x, v, 0.3, 0.5, noise_level=a, generator=g)
        torch.testing.assert_close(out.latents, euler, rtol=0, atol=20 * a)
        torch.testing.assert_close(out.mean, euler, rtol=0, atol=20 * a**2)
    first = sde_step_with_logprob(x, v, torch.zeros(2), torch.full((2,), 0.2), generator=g)
    assert torch.isfinite(first.latents).all() and torch.isfinite(first.log_prob).all()
    with pytest.raises(ValueError, match="noise_level"):
        sde_step_with_logprob(x, v, 0.3, 0.5, noise_level=0.0)
