"""Train the nano world's palette autoencoder for a fixed budget of core-minutes, check it, save it.

The trainer proper is ``thinkgen train --recipe recipes/nano/codec.toml`` (step-based, checkpointed,
resumable); this script shares its loss, data and checks (:mod:`thinkgen.train.codec`) and measures what
a time budget buys, e.g. to compare codec shapes.

    python benchmarks/nano_autoencoder.py --out runs/ae_x4c4 --factor 4 --channels 4 --minutes 10
    python benchmarks/nano_autoencoder.py --out runs/ae_x8c8 --factor 8 --channels 8 --minutes 10

Training: world images (targets and edit inputs of composition, text and edit samples, train split,
generated on the fly), per-pixel cross-entropy over background + palette with ink pixels weighted up,
Gaussian jitter on the (tanh-bounded) latents so that the decoder tolerates a DiT's small errors, AdamW
with a cosine schedule over the time budget. The clock is this process's CPU time divided by its
thread count (``core_seconds``): on a shared machine wall time measures the neighbours' load too.

Checks (val split during training, test split at the end), both on scenes never trained on: pixel-exact
and judge-exact, as :func:`thinkgen.train.codec.round_trip_check` defines them.

Writes ``<out>/`` (the codec, loadable with ``thinkgen.models.vae.load_codec``) and ``<out>/curve.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nano_common import core_seconds, cosine_lr, preset_config, world_detector
from thinkgen.models.nano_autoencoder import NanoAutoencoder
from thinkgen.train.codec import WorldImages, palette_loss, round_trip_check, set_statistics, world_palette
from thinkgen.world.scene import BACKGROUND_RGB

SCENARIOS = ("composition", "text", "edit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to save the codec in (use runs/…)")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--factor", type=int, default=4, help="downscale factor (4 or 8)")
    parser.add_argument("--channels", type=int, default=4, help="latent channels")
    parser.add_argument("--base", type=int, default=32, help="width at half resolution")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per resolution")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ink-weight", type=float, default=5.0, help="cross-entropy weight of ink pixels")
    parser.add_argument("--latent-noise", type=float, default=0.1, help="std of latent jitter in training")
    parser.add_argument("--eval-every-min", type=float, default=2.0)
    parser.add_argument("--eval-n", type=int, default=128, help="val images per intermediate check")
    parser.add_argument("--test-n", type=int, default=1000, help="test images in the final check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `thinkgen` does: subnormal floats slow late CPU training steps
    torch.manual_seed(args.seed)
    config = preset_config(args.preset)
    model = NanoAutoencoder(
        palette=world_palette(config),
        background=list(BACKGROUND_RGB),
        latent_channels=args.channels,
        downscale_factor=args.factor,
        base_channels=args.base,
        blocks_per_stage=args.blocks,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    train_images = WorldImages(config, SCENARIOS, "train", args.seed)
    val = WorldImages(config, SCENARIOS, "val", args.seed).take(args.eval_n)
    detector = world_detector(config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve = (out / "curve.jsonl").open("w")
    num_params = sum(p.numel() for p in model.parameters())
    print(f"params {num_params / 1e6:.2f}M  latent {args.channels}x{config.canvas_px // args.factor}^2  "
          f"preset {args.preset}  threads {args.threads}")

    budget = args.minutes * 60
    trained = 0.0  # core-seconds spent training (checks excluded)
    wall = 0.0
    next_eval = args.eval_every_min * 60
    step = 0
    while trained < budget:
        start, wall_start = core_seconds(args.threads), time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, trained / budget)
        loss = palette_loss(model, train_images.take(args.batch), args.ink_weight, args.latent_noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        trained += core_seconds(args.threads) - start
        wall += time.perf_counter() - wall_start
        # An evaluation point just short of the end would duplicate the final one.
        due = trained >= next_eval and budget - next_eval >= 0.5 * args.eval_every_min * 60
        if due or trained >= budget:
            next_eval += args.eval_every_min * 60
            row = {"minutes": round(trained / 60, 2), "wall_min": round(wall / 60, 2), "step": step,
                   "loss": round(loss.item(), 5)}
            row.update(round_trip_check(model, val, detector))
            curve.write(json.dumps(row) + "\n")
            curve.flush()
            print(row, flush=True)

    model.eval()
    set_statistics(model, train_images.take(1024))
    model.save_pretrained(out)
    test = WorldImages(config, SCENARIOS, "test", args.seed).take(args.test_n)
    final = {"split": "test", "n": args.test_n, "minutes": round(trained / 60, 2), "step": step,
             "params": num_params, **round_trip_check(model, test, detector)}
    curve.write(json.dumps(final) + "\n")
    curve.close()
    print(final)


if __name__ == "__main__":
    main()
