"""The ThinkGen diffusion transformer (OmniGen2-style DiT), state-dict compatible with the released weights.

Data flow of one forward (DESIGN.md, "Data path" and "Facts the released model depends on"):

1. K learnable prepadding states are prepended to the MLLM instruction states (ThinkGen Sec. 3.2,
   "VGI-refine"), then the connector ``RMSNorm + Linear`` maps ``2·text_feat_dim → hidden``.
2. Three refiners run separately: the context refiner (no timestep modulation) over the text, the noise
   refiner over the noisy image's patches, the reference refiner over each reference image on its own
   (its patches carry ``image_index_embedding[j]``).
3. Joint blocks attend over ``[text | references | noisy image]`` with 3-axis RoPE, key-padding masks for
   text of different lengths and for different numbers / sizes of reference images.
4. The timestep-modulated output norm and a linear map give the velocity patches, unpatchified.

Attention sees a token only through its RoPE position id and the key mask, so the order of tokens in
the tensor is free: the joint sequence is laid out as ``[text padded to L_t | refs padded to L_r |
image]`` for every sample instead of packing each sample tightly. The text and the noisy image are then
plain tensor slices at the same offset in every sample (only references are packed per sample), and the
outputs are the released model's up to float round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from thinkgen.models.dit_blocks import (
    AdaLayerNormOut,
    ThinkGenTransformerBlock,
    TimestepCaptionEmbedding,
    swiglu_hidden_dim,
)
from thinkgen.models.rope import RotaryEmbedding3D, image_position_ids, text_position_ids

RefImages = Sequence[Sequence[torch.Tensor] | None] | None
# What the connector reads: cat(hidden_states[-2], hidden_states[-1]) (released), the [-1] half alone, or
# cat(rms_normalised(hidden_states[0]), hidden_states[-1]) (the MLLM hands over its embeddings: see
# ThinkGenMLLM.caption_layers), for small MLLMs whose last layers keep little of a token's identity.
CAPTION_LAYERS = ("last_two", "last", "embedding_and_last")


@dataclass
class ThinkGenTransformerOutput(BaseOutput):
    """Output of :class:`ThinkGenTransformer2DModel`.

    Args:
        sample: Predicted velocity ``x1 − x0``, ``(B, C, H, W)`` like the input latents.
    """

    sample: torch.Tensor


def patchify(latents: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(..., C, H, W)`` → ``(..., H/p · W/p, p·p·C)``, tokens row-major, features ordered (p_row, p_col, c)."""
    *lead, channels, height, width = latents.shape
    p = patch_size
    x = latents.reshape(*lead, channels, height // p, p, width // p, p)  # (..., C, Ht, p, Wt, p)
    x = x.movedim(-5, -1)  # (..., Ht, p, Wt, p, C)
    x = x.movedim(-3, -4)  # (..., Ht, Wt, p, p, C)
    return x.reshape(*lead, (height // p) * (width // p), p * p * channels)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, H/p · W/p, p·p·C)`` → ``(B, C, H, W)``."""
    p = patch_size
    batch, _, features = tokens.shape
    x = tokens.reshape(batch, height // p, width // p, p, p, features // (p * p))  # (B, Ht, Wt, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, Ht, p, Wt, p)
    return x.reshape(batch, -1, height, width)


class ThinkGenTransformer2DModel(ModelMixin, ConfigMixin):
    """The ThinkGen DiT. The 4B released configuration is ``patch_size=2, in_channels=16,
    hidden_size=2520, num_layers=32, num_refiner_layers=2, num_attention_heads=21, num_kv_heads=7,
    multiple_of=256, norm_eps=1e-5, axes_dim_rope=(40, 40, 40), axes_lens=(10000, 10000, 10000),
    text_feat_dim=4096, timestep_scale=1000``.

    Args:
        patch_size: Side of the square latent patches (2).
        in_channels: Latent channels; the output has the same.
        hidden_size: Model width.
        num_layers: Joint transformer blocks.
        num_refiner_layers: Blocks in each of the context, noise and reference refiners.
        num_attention_heads: Query heads.
        num_kv_heads: Key / value heads (grouped-query attention).
        multiple_of: SwiGLU hidden width = 4·hidden rounded up to this multiple.
        norm_eps: Eps of every RMSNorm.
        axes_dim_rope: RoPE channels per axis; must sum to the head dim.
        axes_lens: Largest position + 1 per RoPE axis.
        text_feat_dim: Hidden size of the MLLM; the connector reads ``2·text_feat_dim`` (two layers
            concatenated, DESIGN.md "Conditioning features").
        timestep_scale: Multiplies t ∈ [0, 1] before the sinusoidal embedding.
        num_prepad_states: K learnable states prepended to the text (23 released; 0 disables them).
        max_ref_images: Reference images per sample (rows of ``image_index_embedding``).
        caption_layers: Which MLLM layers the connector reads: ``"last_two"`` (released); ``"last"``, the
            paper's ablation, where the ``hidden_states[-2]`` half of every instruction state is zeroed so the
            connector sees ``hidden_states[-1]`` alone at the same shapes and compute; or
            ``"embedding_and_last"``, where the MLLM puts its RMS-normalised token embeddings in place of
            ``hidden_states[-2]`` (same shapes; for small MLLMs, see ``benchmarks/nano_caption_features.py``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ThinkGenTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 16,
        hidden_size: int = 2520,
        num_layers: int = 32,
        num_refiner_layers: int = 2,
        num_attention_heads: int = 21,
        num_kv_heads: int = 7,
        multiple_of: int = 256,
        norm_eps: float = 1e-5,
        axes_dim_rope: tuple[int, int, int] = (40, 40, 40),
        axes_lens: tuple[int, int, int] = (10000, 10000, 10000),
        text_feat_dim: int = 4096,
        timestep_scale: float = 1000.0,
        num_prepad_states: int = 23,
        max_ref_images: int = 5,
        caption_layers: str = "last_two",
    ) -> None:
        super().__init__()
        if caption_layers not in CAPTION_LAYERS:
            raise ValueError(f"caption_layers must be one of {CAPTION_LAYERS}, got {caption_layers!r}")
        head_dim = hidden_size // num_attention_heads
        if sum(axes_dim_rope) != head_dim:
            raise ValueError(f"axes_dim_rope {list(axes_dim_rope)} must sum to the head dim {head_dim}")
        if num_prepad_states < 0:
            raise ValueError(f"num_prepad_states must be >= 0, got {num_prepad_states}")
        self.rope = RotaryEmbedding3D(axes_dim_rope, axes_lens)
        self.gradient_checkpointing = False
        # Sharded training (FSDP) needs every process to run, and differentiate, the same blocks in every
        # step; set by the wrapping code (thinkgen.train.distributed), never saved.
        self.run_all_blocks = False
        patch_dim = patch_size * patch_size * in_channels
        caption_dim = 2 * text_feat_dim

        self.x_embedder = nn.Linear(patch_dim, hidden_size)
        self.ref_image_patch_embedder = nn.Linear(patch_dim, hidden_size)
        self.image_index_embedding = nn.Parameter(torch.randn(max_ref_images, hidden_size))
        self.prepad_embed = nn.Parameter(torch.randn(1, num_prepad_states, caption_dim))
        # All ones in the released weights: the prepadding states are always attended to.
        self.register_buffer("prepad_mask", torch.ones(1, num_prepad_states, dtype=torch.long))
        self.time_caption_embed = TimestepCaptionEmbedding(hidden_size, caption_dim, norm_eps, timestep_scale)

        ffn_dim = swiglu_hidden_dim(hidden_size, multiple_of)

        def blocks(count: int, use_modulation: bool) -> nn.ModuleList:
            return nn.ModuleList(
                ThinkGenTransformerBlock(
                    hidden_size, num_attention_heads, num_kv_heads, ffn_dim, norm_eps, use_modulation
                )
                for _ in range(count)
            )

        self.noise_refiner = blocks(num_refiner_layers, use_modulation=True)
        self.ref_image_refiner = blocks(num_refiner_layers, use_modulation=True)
        self.context_refiner = blocks(num_refiner_layers, use_modulation=False)
        self.layers = blocks(num_layers, use_modulation=True)
        self.norm_out = AdaLayerNormOut(hidden_size, patch_dim)
        self._zero_init_modulation()

    def _zero_init_modulation(self) -> None:
        """AdaLN-zero: modulation starts as the identity with closed gates, and the output at zero."""
        for block in [*self.noise_refiner, *self.ref_image_refiner, *self.layers]:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for linear in (self.norm_out.linear_1, self.norm_out.linear_2):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def deepened(self, factor: int) -> ThinkGenTransformer2DModel:
        """A copy with ``factor`` times the joint blocks: each block followed by ``factor - 1`` copies of
        itself whose AdaLN gates are closed, so the new model computes exactly what this one does, and
        training opens the copies from there (progressive stacking; refiners are unchanged).

        Example:
            >>> deeper = dit.deepened(2)  # 4 joint blocks -> 8, same outputs
        """
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        with torch.device("meta"):  # no random init of weights that are overwritten next
            deeper = type(self)(**{**config, "num_layers": factor * self.config.num_layers})
        state = {k: v.clone() for k, v in self.state_dict().items() if not k.startswith("layers.")}
        for i, block in enumerate(self.layers):
            for k, v in block.state_dict().items():
                for copy in range(factor):
                    closed = copy > 0 and k.startswith("norm1.linear")  # gates, scales: zero → identity
                    state[f"layers.{factor * i + copy}.{k}"] = torch.zeros_like(v) if closed else v.clone()
        deeper.load_state_dict(state, strict=True, assign=True)
        return deeper.train(self.training)

    @staticmethod
    def _attention_mask(key_mask: torch.Tensor) -> torch.Tensor | None:
        """``None`` when no token is padding (checked once per forward, not per block)."""
        return None if bool(key_mask.all()) else key_mask

    def _run_block(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    # ---- input checks and preparation ------------------------------------------------------------

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        ref_image_hidden_states: RefImages,
    ) -> None:
        cfg = self.config
        batch = hidden_states.shape[0]
        if hidden_states.ndim != 4 or hidden_states.shape[1] != cfg.in_channels:
            raise ValueError(
                f"hidden_states must be (B, {cfg.in_channels}, H, W) latents, got {tuple(hidden_states.shape)}"
            )
        if hidden_states.shape[2] % cfg.patch_size or hidden_states.shape[3] % cfg.patch_size:
            raise ValueError(f"latent H, W {tuple(hidden_states.shape[2:])} must be multiples of {cfg.patch_size}")
        if text_hidden_states.ndim != 3 or text_hidden_states.shape[0] != batch:
            raise ValueError(f"text_hidden_states must be (B={batch}, L, D), got {tuple(text_hidden_states.shape)}")
        if text_hidden_states.shape[2] != 2 * cfg.text_feat_dim:
            raise ValueError(
                f"text_hidden_states width must be 2*text_feat_dim = {2 * cfg.text_feat_dim}, "
                f"got {text_hidden_states.shape[2]}"
            )
        if text_attention_mask.shape != text_hidden_states.shape[:2]:
            raise ValueError(
                f"text_attention_mask must be {tuple(text_hidden_states.shape[:2])}, "
                f"got {tuple(text_attention_mask.shape)}"
            )
        mask = text_attention_mask.bool()
        # Valid tokens must come first: positions count from the first token, as in the released code.
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("text_attention_mask must be right-padded (ones then zeros in every row)")
        if ref_image_hidden_states is None:
            return
        if len(ref_image_hidden_states) != batch:
            raise ValueError(
                f"ref_image_hidden_states needs one entry (list or None) per sample: {batch}, "
                f"got {len(ref_image_hidden_states)}"
            )
        for i, refs in enumerate(ref_image_hidden_states):
            if refs is None:
                continue
            if len(refs) > cfg.max_ref_images:
                raise ValueError(f"sample {i} has {len(refs)} reference images, at most {cfg.max_ref_images}")
            for j, ref in enumerate(refs):
                if ref.ndim != 3 or ref.shape[0] != cfg.in_channels or ref.shape[1] % cfg.patch_size or (
                    ref.shape[2] % cfg.patch_size
                ):
                    raise ValueError(
                        f"reference {j} of sample {i} must be ({cfg.in_channels}, h, w) with h, w multiples "
                        f"of {cfg.patch_size}, got {tuple(ref.shape)}"
                    )

    def _prepend_prepad(
        self, text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ThinkGen Sec. 3.2: prepend K learnable states (and their all-ones mask) to the instruction."""
        batch = text_hidden_states.shape[0]
        prepad = self.prepad_embed.to(text_hidden_states.dtype).expand(batch, -1, -1)  # (B, K, 2D)
        prepad_mask = self.prepad_mask.to(text_attention_mask.dtype).expand(batch, -1)  # (B, K)
        return (
            torch.cat([prepad, text_hidden_states], dim=1),  # (B, K + L, 2D)
            torch.cat([prepad_mask, text_attention_mask], dim=1),  # (B, K + L)
        )

    # ---- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        ref_image_hidden_states: RefImages = None,
        return_dict: bool = True,
    ) -> ThinkGenTransformerOutput | tuple[torch.Tensor]:
        """Predict the flow-matching velocity.

        Args:
            hidden_states: Noisy latents ``(B, C, H, W)``, one size for the whole batch.
            timestep: ``(B,)`` or a scalar, t ∈ [0, 1] with t = 0 noise and t = 1 data.
            text_hidden_states: MLLM instruction states ``(B, L, 2·text_feat_dim)`` (prepadding is
                added here, not by the caller).
            text_attention_mask: ``(B, L)``, 1 for real tokens, right-padded.
            ref_image_hidden_states: Per sample, ``None`` or a list of up to ``max_ref_images`` reference
                latents ``(C, h_j, w_j)``, each of its own size.
            return_dict: Return a :class:`ThinkGenTransformerOutput` rather than a tuple.

        Returns:
            The velocity ``(B, C, H, W)``, in the dtype of ``hidden_states``.
        """
        self._check_inputs(hidden_states, text_hidden_states, text_attention_mask, ref_image_hidden_states)
        p = self.config.patch_size
        batch, _, height, width = hidden_states.shape
        device, dtype = hidden_states.device, self.x_embedder.weight.dtype
        timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32).reshape(-1).expand(batch)

        # 1. Prepadding + connector, timestep embedding.
        text_hidden_states = text_hidden_states.to(dtype)
        if self.config.caption_layers == "last":
            second_to_last_half = torch.arange(text_hidden_states.shape[-1], device=device) < self.config.text_feat_dim
            text_hidden_states = text_hidden_states.masked_fill(second_to_last_half, 0.0)
        text_states, text_mask = self._prepend_prepad(text_hidden_states, text_attention_mask)
        temb, text_states = self.time_caption_embed(timestep, text_states)  # (B, cond), (B, Lt, hidden)
        text_mask = text_mask.bool()  # (B, Lt)
        text_lens = text_mask.sum(dim=1).tolist()

        # 2. RoPE ids of every token: text, references (per image), noisy image.
        grid = (height // p, width // p)
        refs = [list(r) if r is not None else [] for r in (ref_image_hidden_states or [None] * batch)]
        ref_ids, image_ids = [], []
        for text_len, sample_refs in zip(text_lens, refs):
            sample_ref_ids, sample_image_ids = image_position_ids(
                text_len, [(r.shape[1] // p, r.shape[2] // p) for r in sample_refs], grid, device
            )
            ref_ids.append(sample_ref_ids)
            image_ids.append(sample_image_ids)
        text_ids = text_position_ids(text_states.shape[1], device).expand(batch, -1, -1)  # (B, Lt, 3)
        image_ids = torch.stack(image_ids)  # (B, N, 3)

        # 3. Context refiner (text only, no timestep).
        text_cos, text_sin = self.rope(text_ids)
        text_attn_mask = self._attention_mask(text_mask)
        for block in self.context_refiner:
            text_states = self._run_block(block, text_states, text_attn_mask, text_cos, text_sin)

        # 4. Noise refiner over the noisy image.
        image_states = self.x_embedder(patchify(hidden_states.to(dtype), p))  # (B, N, hidden)
        image_cos, image_sin = self.rope(image_ids)
        for block in self.noise_refiner:
            image_states = self._run_block(block, image_states, None, image_cos, image_sin, temb)

        # 5. Reference refiner, each reference image its own sequence; then packed per sample.
        ref_states, ref_mask, ref_ids_padded = self._refine_references(refs, ref_ids, temb)

        # 6. Joint blocks over [text | references | image].
        joint = torch.cat([text_states, ref_states, image_states], dim=1)  # (B, S, hidden)
        image_mask = torch.ones(image_states.shape[:2], dtype=torch.bool, device=device)
        joint_mask = self._attention_mask(torch.cat([text_mask, ref_mask, image_mask], dim=1))  # (B, S)
        joint_cos, joint_sin = self.rope(torch.cat([text_ids, ref_ids_padded, image_ids], dim=1))
        for block in self.layers:
            joint = self._run_block(block, joint, joint_mask, joint_cos, joint_sin, temb)

        # 7. Output norm on the image tokens, unpatchify.
        num_image_tokens = image_states.shape[1]
        patches = self.norm_out(joint[:, -num_image_tokens:], temb)  # (B, N, p*p*C)
        velocity = unpatchify(patches, p, height, width).to(hidden_states.dtype)  # (B, C, H, W)
        if not return_dict:
            return (velocity,)
        return ThinkGenTransformerOutput(sample=velocity)

    def _refine_references(
        self, refs: list[list[torch.Tensor]], ref_ids: list[list[torch.Tensor]], temb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed and refine reference images, then lay them out per sample.

        Each reference image is refined as its own sequence (it never attends to another reference in
        the refiner), with the RoPE ids it will have in the joint sequence and its sample's timestep.

        Args:
            refs: Per sample, a list of ``(C, h_j, w_j)`` latents (may be empty).
            ref_ids: Per sample, the matching ``(n_j, 3)`` RoPE ids.
            temb: ``(B, cond)``.

        Returns:
            ``states (B, L_r, hidden)``, ``mask (B, L_r)`` and ``ids (B, L_r, 3)``, where ``L_r`` is the
            largest total number of reference tokens of a sample (0 without references).
        """
        p = self.config.patch_size
        batch, device = temb.shape[0], temb.device
        dtype = self.ref_image_patch_embedder.weight.dtype
        hidden = self.config.hidden_size
        owner = [i for i, sample_refs in enumerate(refs) for _ in sample_refs]  # sample of each reference
        flat_refs = [r for sample_refs in refs for r in sample_refs]
        flat_ids = [ids for sample_ids in ref_ids for ids in sample_ids]
        slot = [j for sample_refs in refs for j in range(len(sample_refs))]  # index within its sample
        sample_lens = [sum(ids.shape[0] for ids in sample_ids) for sample_ids in ref_ids]
        total_len = max(sample_lens, default=0)
        states = temb.new_zeros(batch, total_len, hidden, dtype=dtype)
        mask = torch.zeros(batch, total_len, dtype=torch.bool, device=device)
        ids = torch.zeros(batch, total_len, 3, dtype=torch.long, device=device)
        if not flat_refs:
            if self.run_all_blocks:  # a one-token stand-in through the reference path, weighted 0
                patch = temb.new_zeros(1, self.ref_image_patch_embedder.in_features, dtype=dtype)
                stand_in = (self.ref_image_patch_embedder(patch) + self.image_index_embedding[0])[None]
                cos, sin = self.rope(torch.zeros(1, 1, 3, dtype=torch.long, device=device))
                for block in self.ref_image_refiner:
                    stand_in = self._run_block(block, stand_in, None, cos, sin, temb[:1])
                states = states + 0 * stand_in.sum()
            return states, mask, ids

        lengths = [ids_j.shape[0] for ids_j in flat_ids]
        longest = max(lengths)
        tokens = temb.new_zeros(len(flat_refs), longest, hidden, dtype=dtype)  # (R, n_max, hidden)
        token_mask = torch.zeros(len(flat_refs), longest, dtype=torch.bool, device=device)
        token_ids = torch.zeros(len(flat_refs), longest, 3, dtype=torch.long, device=device)
        for r, (ref, ids_r, j) in enumerate(zip(flat_refs, flat_ids, slot)):
            embedded = self.ref_image_patch_embedder(patchify(ref.to(device, dtype), p))  # (n_r, hidden)
            # Tells the model which reference this is (DESIGN.md: image_index_embedding (5, hidden)).
            tokens[r, : lengths[r]] = embedded + self.image_index_embedding[j]
            token_mask[r, : lengths[r]] = True
            token_ids[r, : lengths[r]] = ids_r
        ref_cos, ref_sin = self.rope(token_ids)
        ref_temb = temb[owner]  # (R, cond)
        ref_attn_mask = self._attention_mask(token_mask)
        for block in self.ref_image_refiner:
            tokens = self._run_block(block, tokens, ref_attn_mask, ref_cos, ref_sin, ref_temb)

        offsets = [0] * batch
        for r, i in enumerate(owner):
            start, end = offsets[i], offsets[i] + lengths[r]
            states[i, start:end] = tokens[r, : lengths[r]]
            mask[i, start:end] = True
            ids[i, start:end] = flat_ids[r]
            offsets[i] = end
        return states, mask, ids
