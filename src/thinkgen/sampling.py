"""Flow-matching sampling for the ThinkGen DiT: timesteps, Euler ODE step, SDE step with log-prob, CFG.

Everything here is a pure function of tensors (plus the DiT passed in), not a stateful diffusers
scheduler: the pipeline, the supervised trainers and the DiT-GRPO trainer all need the same few formulas
at different places of their own loops (an Euler loop, an SDE rollout that records log-probs, a
recomputation of log-probs under new weights), and pure functions serve all three without state to keep
in sync. This module is the one home of that math.

Time convention (DESIGN.md, "Time"): t = 0 is noise, t = 1 data; ``x_t = t·x1 + (1 − t)·x0``; the DiT
predicts ``v = x1 − x0``; an Euler step is ``x ← x + (t' − t)·v``. Latents stay float32 between steps
whatever the DiT's dtype.

Guidance (DESIGN.md, "CFG"): ``c`` = prompt + reference images, ``r`` = negative prompt + references,
``u`` = negative prompt without references.

* text only: ``u + s_t·(c − u)``
* text and image: ``u + s_i·(r − u) + s_t·(c − r)``

A scale of 1 or below switches its guidance off, as in the released sampler, with one difference: for
image guidance without text guidance (s_i > 1, s_t ≤ 1) the released sampler skips guidance altogether,
while here the text-and-image formula runs with the given s_t, so the image guidance the caller asked
for still applies. Unlike the released sampler, which evaluates one DiT call per branch, branches share DiT
calls (``guidance_batching``): by default the branches of one sequence length go through the DiT as one
batch (text guidance: one call per step; an edit's reference-free branch, shorter, gets its own call
rather than padding to the others' length); ``"all"`` stacks every branch into one call, ``"none"`` runs
the released loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: the sampling math does not need diffusers
    from thinkgen.models.dit import RefImages, ThinkGenTransformer2DModel

# The released model's m = sqrt(latent_h · latent_w) / 40: 1 at 320² pixels (40² latents), 3.2 at 1024²
# (128² latents). A model trained at another scale sets its own reference (the nano model: its 16² latents).
SHIFT_REFERENCE_SIDE = 40.0


# ---- timesteps ----------------------------------------------------------------------------------


def time_shift_factor(
    latent_height: int, latent_width: int, reference_side: float = SHIFT_REFERENCE_SIDE
) -> float:
    """Dynamic shift factor ``m = sqrt(latent_h · latent_w) / reference_side`` of the latent grid (not the
    token grid); ``m = 1`` (no shift) at the reference size."""
    if reference_side <= 0:
        raise ValueError(f"reference_side must be > 0, got {reference_side}")
    return math.sqrt(latent_height * latent_width) / reference_side


def flow_timesteps(
    num_inference_steps: int,
    latent_height: int,
    latent_width: int,
    device: torch.device | str | None = None,
    shift_reference_side: float = SHIFT_REFERENCE_SIDE,
) -> torch.Tensor:
    """The shifted time grid of a sampling run.

    ``linspace(0, 1, N + 1)[:-1]``, shifted by ``t ← t / (m − m·t + t)`` so that larger images spend more
    steps near the noise end, then the terminal ``t = 1`` appended.

    Args:
        num_inference_steps: N, number of DiT evaluations.
        latent_height, latent_width: Latent size (pixels / 8 for the FLUX VAE).
        device: Where to put the grid.
        shift_reference_side: Latent side at which the shift is 1 (:func:`time_shift_factor`).

    Returns:
        ``(N + 1,)`` float32; entries ``0 … N − 1`` are the times the DiT is evaluated at, entry ``N`` is 1.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    m = time_shift_factor(latent_height, latent_width, shift_reference_side)
    t = torch.linspace(0, 1, num_inference_steps + 1, dtype=torch.float64)[:-1]
    t = t / (m - m * t + t)
    return torch.cat([t, torch.ones(1, dtype=torch.float64)]).to(device=device, dtype=torch.float32)


# ---- steps ------------------------------------------------------------------------------------------


def euler_step(
    latents: torch.Tensor, velocity: torch.Tensor, t: float | torch.Tensor, t_next: float | torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow ODE, ``x + (t' − t)·v``, in float32.

    Args:
        latents: ``(B, C, H, W)`` at time ``t``.
        velocity: ``(B, C, H, W)`` predicted ``x1 − x0``.
        t, t_next: Current and next time (scalars, or ``(B,)``).

    Returns:
        ``(B, C, H, W)`` float32 latents at ``t_next``.
    """
    dt = _per_sample(t_next, latents) - _per_sample(t, latents)
    return latents.float() + dt * velocity.float()


@dataclass
class SDEStepOutput:
    """Result of :func:`sde_step_with_logprob`; every tensor float32.

    Args:
        latents: ``(B, C, H, W)`` next latents.
        log_prob: ``(B,)`` Gaussian log density of ``latents``, averaged over elements.
        mean: ``(B, C, H, W)`` mean of the transition.
        std: ``(B, 1, 1, 1)`` standard deviation of the transition (for the KL ``‖μ − μ_ref‖² / (2 std²)``).
    """

    latents: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sde_step_with_logprob(
    latents: torch.Tensor,
    velocity: torch.Tensor,
    t: float | torch.Tensor,
    t_next: float | torch.Tensor,
    noise_level: float = 0.7,
    generator: torch.Generator | None = None,
    next_latents: torch.Tensor | None = None,
) -> SDEStepOutput:
    """One step of the reverse SDE that has the flow ODE's marginals (Flow-GRPO), with its log-prob.

    Flow-GRPO writes it with σ = 1 − t as the noise time and ``v_σ = x0 − x1 = −v``:
    ``σ_s = a·sqrt(σ / (1 − σ))``, ``μ = x + [v_σ + σ_s²/(2σ)·(x + (1 − σ)·v_σ)]·dσ``,
    ``x' = μ + σ_s·sqrt(−dσ)·ε``. In our time (Δ = t' − t = −dσ > 0) that is

        σ_s = a·sqrt((1 − t) / t),  μ = x + Δ·v − Δ·σ_s² / (2(1 − t))·(x − t·v),  std = σ_s·sqrt(Δ).

    At t = 0 (pure noise) σ_s is infinite; as in Flow-GRPO the denominator then uses the next time.
    As ``a → 0`` the step becomes :func:`euler_step`.

    Args:
        latents: ``(B, C, H, W)`` at time ``t``.
        velocity: ``(B, C, H, W)`` predicted ``x1 − x0`` (already guided, if guidance is used).
        t, t_next: Current and next time, ``0 ≤ t < t' ≤ 1`` (scalars or ``(B,)``).
        noise_level: ``a`` (≈ 0.7 in Flow-GRPO); must be > 0.
        generator: RNG of the injected noise.
        next_latents: If given, no noise is drawn: the log-prob of these latents is returned (to
            re-evaluate a recorded rollout under new weights).

    Returns:
        :class:`SDEStepOutput`. The log-prob is differentiable through ``mean`` only; the sampled
        latents are treated as data.
    """
    if noise_level <= 0:
        raise ValueError(f"noise_level must be > 0 (use euler_step for the ODE), got {noise_level}")
    x, v = latents.float(), velocity.float()
    t, t_next = _per_sample(t, x), _per_sample(t_next, x)
    dt = t_next - t
    if (dt <= 0).any() or (t < 0).any() or (t_next > 1).any():
        raise ValueError("sde_step_with_logprob needs 0 <= t < t_next <= 1")
    # Flow-GRPO's σ_s = a·sqrt(σ / (1 − σ)); at σ = 1 (our t = 0) the denominator uses the next time.
    sigma = 1 - t
    sigma_s = noise_level * torch.sqrt(sigma / torch.where(t == 0, t_next, t))
    mean = x + dt * v - dt * sigma_s**2 / (2 * sigma) * (x - t * v)
    std = sigma_s * torch.sqrt(dt)  # (B, 1, 1, 1)
    if next_latents is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        next_latents = mean + std * noise
    sample = next_latents.detach().float()
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return SDEStepOutput(latents=sample, log_prob=log_density.mean(dim=(1, 2, 3)), mean=mean, std=std)


def _per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``(B,)`` time as a float32 ``(B, 1, 1, 1)`` tensor next to ``like`` ``(B, C, H, W)``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device).expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


# ---- guidance ---------------------------------------------------------------------------------------


@dataclass
class GuidanceBranch:
    """The condition of one guidance branch for the whole batch.

    Args:
        text_hidden_states: ``(B, L, 2·text_feat_dim)``, right-padded to the length shared by all branches.
        text_attention_mask: ``(B, L)``.
        ref_image_hidden_states: Per sample, a list of reference latents ``(C, h, w)`` or ``None``; or
            ``None`` for no references at all.
    """

    text_hidden_states: torch.Tensor
    text_attention_mask: torch.Tensor
    ref_image_hidden_states: RefImages


@dataclass
class GuidanceConditions:
    """The branches of a sampling run, built once: ``cond`` = c, ``ref`` = r, ``uncond`` = u.

    ``ref`` exists only with reference images (without them it would equal ``uncond``); ``uncond`` only
    with a negative prompt.
    """

    cond: GuidanceBranch
    ref: GuidanceBranch | None
    uncond: GuidanceBranch | None


def build_guidance_conditions(
    prompt_embeds: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_attention_mask: torch.Tensor | None = None,
    ref_latents: RefImages = None,
) -> GuidanceConditions:
    """Build c, r and u, with text right-padded to one length so the branches stack along the batch.

    Args:
        prompt_embeds: ``(B, L_c, 2·D)`` instruction states.
        prompt_attention_mask: ``(B, L_c)``.
        negative_prompt_embeds: ``(B, L_n, 2·D)``, or ``None`` (no guidance possible).
        negative_prompt_attention_mask: ``(B, L_n)``; required with ``negative_prompt_embeds``.
        ref_latents: Per sample, ``None`` or a list of reference latents ``(C, h, w)``.
    """
    batch = prompt_embeds.shape[0]
    refs = list(ref_latents) if ref_latents is not None and any(r for r in ref_latents) else None
    if negative_prompt_embeds is None:
        return GuidanceConditions(GuidanceBranch(prompt_embeds, prompt_attention_mask, refs), None, None)
    if negative_prompt_attention_mask is None or negative_prompt_embeds.shape[0] != batch:
        raise ValueError(
            f"negative_prompt_embeds needs batch {batch} and a negative_prompt_attention_mask, got shape "
            f"{tuple(negative_prompt_embeds.shape)} and mask {negative_prompt_attention_mask is not None}"
        )
    text_len = max(prompt_embeds.shape[1], negative_prompt_embeds.shape[1])

    def right_pad(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = text_len - states.shape[1]
        return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra))  # (B, L, 2D), (B, L)

    cond_states, cond_mask = right_pad(prompt_embeds, prompt_attention_mask)
    neg_states, neg_mask = right_pad(negative_prompt_embeds, negative_prompt_attention_mask)
    return GuidanceConditions(
        cond=GuidanceBranch(cond_states, cond_mask, refs),
        ref=GuidanceBranch(neg_states, neg_mask, refs) if refs is not None else None,
        uncond=GuidanceBranch(neg_states, neg_mask, None),
    )


GuidanceBatching = Literal["by_length", "all", "none"]
GUIDANCE_BATCHING: tuple[str, ...] = ("by_length", "all", "none")


def check_guidance_batching(batching: str) -> None:
    """Raise ``ValueError`` unless ``batching`` is one of :data:`GUIDANCE_BATCHING`."""
    if batching not in GUIDANCE_BATCHING:
        raise ValueError(f"guidance_batching={batching!r} is not one of {', '.join(GUIDANCE_BATCHING)}")


def _stack_branches(branches: Sequence[GuidanceBranch]) -> GuidanceBranch:
    """Concatenate branches along the batch: ``(G·B, L, 2D)`` text, ``G·B`` reference entries."""
    batch = branches[0].text_hidden_states.shape[0]
    refs: RefImages = None
    if any(b.ref_image_hidden_states is not None for b in branches):
        refs = [r for b in branches for r in (b.ref_image_hidden_states or [None] * batch)]
    return GuidanceBranch(
        torch.cat([b.text_hidden_states for b in branches]),
        torch.cat([b.text_attention_mask for b in branches]),
        refs,
    )


def _sequence_shape(branch: GuidanceBranch) -> tuple:
    """What fixes the length of each sample's DiT sequence in ``branch``: its text length and the shapes of
    its reference latents. Branches with equal shapes stack without padding."""
    refs = branch.ref_image_hidden_states or [None] * branch.text_hidden_states.shape[0]
    return branch.text_hidden_states.shape[1], tuple(tuple(tuple(r.shape) for r in row or ()) for row in refs)


def _branch_groups(branches: Sequence[GuidanceBranch], batching: str) -> list[list[int]]:
    """Indices of the branches that share one DiT call."""
    check_guidance_batching(batching)
    if batching == "none":
        return [[i] for i in range(len(branches))]
    if batching == "all":
        return [list(range(len(branches)))]
    groups: dict[tuple, list[int]] = {}
    for i, branch in enumerate(branches):
        groups.setdefault(_sequence_shape(branch), []).append(i)
    return list(groups.values())


def guided_velocity(
    transformer: ThinkGenTransformer2DModel,
    latents: torch.Tensor,
    t: float | torch.Tensor,
    conditions: GuidanceConditions,
    guidance_scale: float,
    image_guidance_scale: float,
    guidance_batching: GuidanceBatching = "by_length",
) -> torch.Tensor:
    """The DiT's velocity at one step with text / image classifier-free guidance.

    Args:
        transformer: The DiT.
        latents: ``(B, C, H, W)`` at time ``t``.
        t: Current time (scalar).
        conditions: From :func:`build_guidance_conditions`.
        guidance_scale: ``s_t``; ≤ 1 turns text guidance off.
        image_guidance_scale: ``s_i``; ≤ 1 (or no references) turns image guidance off.
        guidance_batching: How the branches share DiT calls. ``"by_length"`` (default) stacks the branches
            whose sequences have the same length: text guidance is one call, and an edit's reference-free
            branch runs on its own rather than padded to the reference length (on the 4B DiT at 1024², padding
            it made a guided edit step 37 % slower than one call per branch). ``"all"`` stacks every branch,
            padding as needed; ``"none"`` calls the DiT once per branch like the released sampler, for the
            least peak memory.

    Returns:
        ``(B, C, H, W)`` float32 guided velocity.
    """
    use_text = guidance_scale > 1 and conditions.uncond is not None
    use_image = image_guidance_scale > 1 and conditions.ref is not None
    if use_image:
        branches = [conditions.cond, conditions.ref, conditions.uncond]
    elif use_text:
        branches = [conditions.cond, conditions.uncond]
    else:
        branches = [conditions.cond]

    def dit(x: torch.Tensor, branch: GuidanceBranch) -> torch.Tensor:
        timestep = torch.full((x.shape[0],), float(t), device=x.device)
        out = transformer(x, timestep, branch.text_hidden_states, branch.text_attention_mask,
                          branch.ref_image_hidden_states)
        return out.sample.float()

    by_branch: dict[int, torch.Tensor] = {}
    for group in _branch_groups(branches, guidance_batching):
        stacked = _stack_branches([branches[i] for i in group])
        by_branch.update(zip(group, dit(latents.repeat(len(group), 1, 1, 1), stacked).chunk(len(group))))
    preds = [by_branch[i] for i in range(len(branches))]
    if use_image:
        cond, ref, uncond = preds
        return uncond + image_guidance_scale * (ref - uncond) + guidance_scale * (cond - ref)
    if use_text:
        cond, uncond = preds
        return uncond + guidance_scale * (cond - uncond)
    return preds[0]


# ---- the ODE sampling loop --------------------------------------------------------------------------


@torch.no_grad()
def sample_latents(
    transformer: ThinkGenTransformer2DModel,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_attention_mask: torch.Tensor | None = None,
    ref_latents: RefImages = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 4.0,
    image_guidance_scale: float = 2.0,
    cfg_range: tuple[float, float] = (0.0, 1.0),
    guidance_batching: GuidanceBatching = "by_length",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    shift_reference_side: float = SHIFT_REFERENCE_SIDE,
) -> torch.Tensor:
    """Integrate the flow ODE from noise to data with Euler steps and guidance.

    Args:
        transformer: The DiT.
        latents: ``(B, C, H, W)`` initial noise (t = 0).
        prompt_embeds: ``(B, L_c, 2·D)`` instruction states; ``prompt_attention_mask`` ``(B, L_c)``.
        negative_prompt_embeds: ``(B, L_n, 2·D)`` or ``None`` (then no guidance);
            ``negative_prompt_attention_mask`` ``(B, L_n)``.
        ref_latents: Per sample, ``None`` or a list of reference latents ``(C, h, w)``.
        num_inference_steps: N (50 in the released defaults).
        guidance_scale: Text guidance ``s_t`` (4.0).
        image_guidance_scale: Image guidance ``s_i`` (2.0; used only with reference images).
        cfg_range: Guidance applies at step ``i`` iff ``cfg_range[0] ≤ i / N ≤ cfg_range[1]``.
        guidance_batching: See :func:`guided_velocity`.
        callback: Called as ``callback(i, latents)`` after step ``i`` (progress bars, previews).
        shift_reference_side: The model's time-shift reference (:func:`flow_timesteps`).

    Returns:
        ``(B, C, H, W)`` float32 latents at t = 1.
    """
    conditions = build_guidance_conditions(
        prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask, ref_latents
    )
    # Python floats on the host: reading a time never waits for the device.
    timesteps = flow_timesteps(
        num_inference_steps, latents.shape[-2], latents.shape[-1], shift_reference_side=shift_reference_side
    ).tolist()
    latents = latents.float()
    for i in range(num_inference_steps):
        in_range = cfg_range[0] <= i / num_inference_steps <= cfg_range[1]
        velocity = guided_velocity(
            transformer,
            latents,
            timesteps[i],
            conditions,
            guidance_scale if in_range else 1.0,
            image_guidance_scale if in_range else 1.0,
            guidance_batching,
        )
        latents = euler_step(latents, velocity, timesteps[i], timesteps[i + 1])
        if callback is not None:
            callback(i, latents)
    return latents
