"""Size and speed of the full (4B) ThinkGen DiT.

Always builds the released 4B configuration on the meta device (no memory) and reports its parameter
count. With a GPU it then builds the model with random bf16 weights and times one DiT forward at the
given resolution: text-to-image (one branch), text CFG and text+image CFG (edit, one reference of the
output size), in each guidance batching mode (``by_length``, ``all``, ``none``), with peak memory.

    python benchmarks/dit_full_size.py                  # parameter count; timings too if CUDA is present
    python benchmarks/dit_full_size.py --tiny           # the same path on a small config, runs on a CPU
    python benchmarks/dit_full_size.py --resolution 512 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.sampling import build_guidance_conditions, guided_velocity

RELEASED_4B = dict(
    patch_size=2, in_channels=16, hidden_size=2520, num_layers=32, num_refiner_layers=2, num_attention_heads=21,
    num_kv_heads=7, multiple_of=256, norm_eps=1e-5, axes_dim_rope=(40, 40, 40), axes_lens=(10000, 10000, 10000),
    text_feat_dim=4096, timestep_scale=1000.0,
)
TINY = dict(RELEASED_4B, hidden_size=120, num_layers=2, num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1,
            multiple_of=32, axes_dim_rope=(8, 16, 16), text_feat_dim=64)
VAE_FACTOR = 8  # FLUX VAE: 8× downsampling

# ---- args -------------------------------------------------------------------------------------------
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="small config, float32; runs on a CPU")
parser.add_argument("--resolution", type=int, default=1024, help="image side in pixels")
parser.add_argument("--text-len", type=int, default=128, help="instruction tokens (prepadding comes on top)")
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

# ---- size on the meta device ------------------------------------------------------------------------
with torch.device("meta"):
    full = ThinkGenTransformer2DModel(**RELEASED_4B)
num_params = sum(p.numel() for p in full.parameters())
print(f"4B config: {num_params:,} parameters ({num_params * 2 / 2**30:.2f} GiB in bf16), "
      f"{sum(b.numel() for b in full.buffers())} buffer elements")
del full

device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu" and not args.tiny:
    print("no CUDA device: skipping the timed forward (use --tiny to run the small config here)")
    raise SystemExit(0)

# ---- model with random weights ----------------------------------------------------------------------
config = TINY if args.tiny else RELEASED_4B
dtype = torch.float32 if args.tiny else torch.bfloat16
torch.manual_seed(0)
torch.set_default_dtype(dtype)
with torch.device(device):
    model = ThinkGenTransformer2DModel(**config).eval()
torch.set_default_dtype(torch.float32)
latent = args.resolution // VAE_FACTOR
width = 2 * config["text_feat_dim"]
print(f"device={device} dtype={dtype} config={'tiny' if args.tiny else '4B'} resolution={args.resolution} "
      f"({(latent // 2) ** 2} image tokens) text={args.text_len}+{model.config.num_prepad_states} prepad")

latents = torch.randn(1, 16, latent, latent, device=device)
conditions = {
    "t2i": build_guidance_conditions(torch.randn(1, args.text_len, width, device=device, dtype=dtype),
                                     torch.ones(1, args.text_len, dtype=torch.long, device=device)),
}
negative = dict(negative_prompt_embeds=torch.randn(1, 8, width, device=device, dtype=dtype),
                negative_prompt_attention_mask=torch.ones(1, 8, dtype=torch.long, device=device))
conditions["text CFG"] = build_guidance_conditions(conditions["t2i"].cond.text_hidden_states,
                                                   conditions["t2i"].cond.text_attention_mask, **negative)
conditions["edit CFG"] = build_guidance_conditions(
    conditions["t2i"].cond.text_hidden_states, conditions["t2i"].cond.text_attention_mask, **negative,
    ref_latents=[[torch.randn(16, latent, latent, device=device)]],
)


def timed(fn) -> float:
    """Best-of-``repeats`` seconds of ``fn()`` after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(args.repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# ---- measure one guided step ------------------------------------------------------------------------
with torch.no_grad():
    for label, cond in conditions.items():
        line = f"{label:9s}"
        for mode in ("by_length", "all", "none"):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = timed(lambda: guided_velocity(model, latents, 0.5, cond, 4.0, 2.0, mode))
            memory = f" peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB" if device == "cuda" else ""
            line += f"   {mode} {seconds * 1e3:8.1f} ms{memory}"
        print(line)
