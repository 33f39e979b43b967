"""Time per image of the guidance batching modes: one DiT call per branch vs stacked branches.

The released sampler evaluates the conditional, reference and unconditional branches of classifier-free
guidance with separate DiT calls (``"none"``); ``thinkgen.sampling`` stacks the branches whose sequences
have the same length (``"by_length"``, the default) or all of them, padding the reference-free branch
(``"all"``). This script runs the three on the same weights and inputs, checks that they give the same
latents, and prints each mode's time as a ratio to one call per branch.

    python benchmarks/dit_guidance_batching.py                      # small CPU config (default)
    python benchmarks/dit_guidance_batching.py --device cuda --hidden-size 512 --latent-size 64
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.sampling import sample_latents

# ---- args -------------------------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--device", default="cpu")
parser.add_argument("--hidden-size", type=int, default=192)  # 6 heads of 32
parser.add_argument("--num-layers", type=int, default=4)
parser.add_argument("--latent-size", type=int, default=16)  # 8×8 = 64 image tokens at patch 2
parser.add_argument("--text-len", type=int, default=24)
parser.add_argument("--batch-size", type=int, default=1)
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

# ---- model and inputs -------------------------------------------------------------------------------
torch.manual_seed(0)
model = ThinkGenTransformer2DModel(
    patch_size=2, in_channels=16, hidden_size=args.hidden_size, num_layers=args.num_layers, num_refiner_layers=1,
    num_attention_heads=args.hidden_size // 32, num_kv_heads=args.hidden_size // 96, multiple_of=32,
    axes_dim_rope=(8, 12, 12), axes_lens=(1024, 256, 256), text_feat_dim=64, num_prepad_states=23,
).to(args.device).eval()
# AdaLN-zero starts with closed gates and a zero output; random modulation makes the check meaningful.
with torch.no_grad():
    for name, param in model.named_parameters():
        if "norm1.linear" in name or "norm_out" in name:
            param.normal_(0, 0.02)

B, size, dev = args.batch_size, args.latent_size, args.device
inputs = dict(
    latents=torch.randn(B, 16, size, size, device=dev),
    prompt_embeds=torch.randn(B, args.text_len, 128, device=dev),
    prompt_attention_mask=torch.ones(B, args.text_len, dtype=torch.long, device=dev),
    negative_prompt_embeds=torch.randn(B, 4, 128, device=dev),
    negative_prompt_attention_mask=torch.ones(B, 4, dtype=torch.long, device=dev),
)
ref_latents = [[torch.randn(16, size, size, device=dev)] for _ in range(B)]


def run(guidance_batching: str, refs) -> tuple[float, torch.Tensor]:
    """Best-of-``repeats`` seconds per image, and the final latents."""
    best = float("inf")
    for _ in range(args.repeats):
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = sample_latents(model, **inputs, ref_latents=refs, num_inference_steps=args.steps,
                             guidance_scale=4.0, image_guidance_scale=2.0, guidance_batching=guidance_batching)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / B)
    return best, out


# ---- measure ----------------------------------------------------------------------------------------
run("none", None)  # warm-up
print(f"device={dev} threads={torch.get_num_threads()} params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
      f"latent={size}x{size} text={args.text_len} batch={B} steps={args.steps}")
for label, refs in (("text CFG (2 branches)", None), ("text+image CFG (3 branches)", ref_latents)):
    baseline_s, baseline = run("none", refs)
    line = f"{label:28s} none {baseline_s * 1e3:8.1f} ms/image"
    for mode in ("by_length", "all"):
        seconds, out = run(mode, refs)
        torch.testing.assert_close(out, baseline, rtol=1e-3, atol=1e-3)
        line += f"   {mode} {seconds * 1e3:8.1f} ms/image ({seconds / baseline_s:.2f}x of none)"
    print(line)
