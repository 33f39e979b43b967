"""Learning curve of a small latent ThinkGen DiT on the nano world: judge accuracy vs minutes of CPU training.

    python benchmarks/nano_learning_curve.py --codec runs/ae_x4c4 --patch 2 --width 192 --depth 4 \\
        --minutes 12 --eval-every-min 3 --out runs/curves/x4_w192_d4.jsonl

What is trained: :class:`~thinkgen.models.dit.ThinkGenTransformer2DModel` (the real architecture, small
config) over a frozen codec's latents, with flow matching (t = 0 noise, t = 1 data, logit-normal t,
velocity target) and AdamW; an EMA copy is evaluated.

Conditioning isolates DiT learning from the MLLM: the *answer* text of each sample (what the MLLM writes
after ``</think>``, e.g. ``one red circle above one pink star`` or ``the word "bat"``) is tokenised by
words, quoted words letter by letter, and each token gets a learned embedding of width
``2·text_feat_dim`` (the width of the concatenated MLLM states), trained with the DiT. 10 % of training
prompts are replaced by an empty prompt (one null token) for classifier-free guidance.

Data: composition and text samples of the train split, encoded once into a latent pool before the clock
starts (its cost is printed). Evaluation: fixed held-out test prompts, sampled with ``sample_latents``
(Euler, CFG), decoded by the codec and read by the world's judge (``thinkgen.world.score.score_spec``,
detector thresholds of the world);
reported are exact spec accuracy on composition prompts (per task too), and word accuracy and exact
accuracy on text prompts. Only training counts as minutes, and minutes are core-minutes (this process's
CPU time divided by its thread count), since on a shared machine wall time measures the neighbours' load
too; wall minutes are logged alongside. Evaluation pauses the clock.

Writes one JSON line per evaluation to ``--out`` and prints a table at the end.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nano_common import core_seconds, cosine_lr, judge, preset_config, to_model_range, to_pil, world_detector
from thinkgen.models.dit import ThinkGenTransformer2DModel
from thinkgen.models.vae import load_codec
from thinkgen.sampling import sample_latents
from thinkgen.world.sample import WorldSample
from thinkgen.world.scenarios import generate, iter_samples

PAD, NULL, UNK, QUOTE = "<pad>", "<null>", "<unk>", '"'
_TOKEN = re.compile(r'"[a-z]+"|[a-z]+|[0-9]+|,')


def tokenize(text: str) -> list[str]:
    """Words as tokens; a quoted word (a word to render) as its letters between quote tokens."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if token.startswith(QUOTE):
            out += [QUOTE, *(f"#{c}" for c in token[1:-1]), QUOTE]
        else:
            out.append(token)
    return out


class AnswerEncoder(nn.Module):
    """Learned token embeddings of answer texts, standing in for the MLLM's instruction states."""

    def __init__(self, vocab: list[str], width: int) -> None:
        super().__init__()
        self.index = {token: i for i, token in enumerate(vocab)}
        self.embed = nn.Embedding(len(vocab), width)
        nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts (``None`` = the empty prompt) → states ``(B, L, width)`` and mask ``(B, L)``."""
        ids = [[self.index.get(t, self.index[UNK]) for t in tokenize(x)] if x is not None else [self.index[NULL]]
               for x in texts]
        length = max(len(i) for i in ids)
        padded = torch.tensor([i + [self.index[PAD]] * (length - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (length - len(i)) for i in ids])
        return self.embed(padded), mask


def build_vocab(samples: list[WorldSample]) -> list[str]:
    letters = [f"#{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    words = sorted({t for s in samples for t in tokenize(s.answer)} - set(letters))
    return [PAD, NULL, UNK, *words, *letters]


@torch.no_grad()
def encode_pool(codec, samples: list[WorldSample], chunk: int = 128) -> torch.Tensor:
    return torch.cat([
        codec.encode(to_model_range([s.target_image() for s in samples[i:i + chunk]]))
        for i in range(0, len(samples), chunk)
    ])


@torch.no_grad()
def evaluate(dit, text_encoder, codec, samples, detector, steps: int, cfg: float, latent_shape, seed: int,
             bf16: bool) -> tuple[dict, list]:
    """Judge accuracy of ``samples`` (the same noise at every evaluation) and the generated images."""
    dit.eval()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(samples), *latent_shape, generator=generator)
    states, mask = text_encoder([s.answer for s in samples])
    null_states, null_mask = text_encoder([None] * len(samples))
    images = []
    for i in range(0, len(samples), 64):
        part = slice(i, i + 64)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            latents = sample_latents(dit, noise[part], states[part], mask[part], null_states[part],
                                     null_mask[part], num_inference_steps=steps, guidance_scale=cfg)
        images += to_pil(codec.decode(latents))
    by_tag: dict[str, list[bool]] = defaultdict(list)
    word_acc: list[float] = []
    for sample, image in zip(samples, images):
        ok, acc = judge(detector, image, sample.spec)
        by_tag[sample.spec.tag].append(ok)
        if sample.scenario == "text":
            word_acc.append(acc)
    dit.train()
    comp = [ok for tag, oks in by_tag.items() if tag != "text" for ok in oks]
    row = {"composition": round(sum(comp) / max(1, len(comp)), 3)}
    if word_acc:
        row["text_word_acc"] = round(sum(word_acc) / len(word_acc), 3)
        row["text_exact"] = round(sum(by_tag["text"]) / len(by_tag["text"]), 3)
    row["by_tag"] = {tag: round(sum(oks) / len(oks), 3) for tag, oks in sorted(by_tag.items())}
    return row, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", required=True, help="a saved codec folder (benchmarks/nano_autoencoder.py)")
    parser.add_argument("--preset", default="nano", help="world preset (or nano-nowords)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4, help="joint blocks")
    parser.add_argument("--refiner-depth", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=64, help="text_feat_dim (conditioning width is twice this)")
    parser.add_argument("--prepad", type=int, default=8, help="prepadding states")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--text-share", type=float, default=0.3, help="share of text samples (rest: composition)")
    parser.add_argument("--pool", type=int, default=12000, help="training samples encoded up front")
    parser.add_argument("--eval-every-min", type=float, default=3.0)
    parser.add_argument("--eval-n", type=int, default=160)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the DiT (training and sampling)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSONL curve path (use runs/…)")
    parser.add_argument("--save-images", action="store_true", help="write the last evaluation's images next to --out")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `thinkgen` does: subnormal floats slow late CPU training steps
    torch.manual_seed(args.seed)
    config = preset_config(args.preset)
    codec = load_codec(args.codec)
    mix = {"composition": 1 - args.text_share, "text": args.text_share} if config.use_words else "composition"
    side = config.canvas_px // codec.downscale_factor
    latent_shape = (codec.latent_channels, side, side)
    if side % args.patch:
        raise SystemExit(f"latent side {side} is not a multiple of --patch {args.patch}")

    start = time.perf_counter()
    pool = list(iter_samples(mix, config=config, split="train", seed=args.seed, stop=args.pool))
    pool_latents = encode_pool(codec, pool)
    pool_answers = [s.answer for s in pool]
    num_text = round(args.eval_n * args.text_share) if config.use_words else 0
    eval_samples = [generate("composition", i, config=config, split="test", seed=args.seed)
                    for i in range(args.eval_n - num_text)]
    eval_samples += [generate("text", i, config=config, split="test", seed=args.seed) for i in range(num_text)]
    setup_s = time.perf_counter() - start
    detector = world_detector(config)
    # The codec's own ceiling: the judge on round-tripped targets of the evaluation prompts.
    with torch.no_grad():
        round_trip = to_pil(codec.decode(encode_pool(codec, eval_samples)))
    ceiling = sum(judge(detector, image, s.spec)[0] for s, image in zip(eval_samples, round_trip)) / len(eval_samples)

    heads = args.width // args.head_dim
    rope_axes = (args.head_dim - 2 * (args.head_dim // 3), args.head_dim // 3, args.head_dim // 3)
    dit = ThinkGenTransformer2DModel(
        patch_size=args.patch, in_channels=codec.latent_channels, hidden_size=args.width, num_layers=args.depth,
        num_refiner_layers=args.refiner_depth, num_attention_heads=heads, num_kv_heads=heads, multiple_of=32,
        axes_dim_rope=rope_axes, axes_lens=(1024, 64, 64), text_feat_dim=args.text_dim,
        num_prepad_states=args.prepad, max_ref_images=1,
    )
    text_encoder = AnswerEncoder(build_vocab(pool), 2 * args.text_dim)
    params = [*dit.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_dit, ema_text = copy.deepcopy(dit).eval(), copy.deepcopy(text_encoder)
    ema_params = [*ema_dit.parameters(), *ema_text.parameters()]
    num_params = sum(p.numel() for p in dit.parameters())
    print(f"DiT {num_params / 1e6:.2f}M params, {(side // args.patch) ** 2} image tokens, codec {args.codec} "
          f"latent {latent_shape}, preset {args.preset}, batch {args.batch}, threads {args.threads}; "
          f"setup (pool of {args.pool} + eval prompts) {setup_s:.0f}s; codec ceiling on the eval prompts {ceiling:.3f}",
          flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve = out.open("w")
    budget = args.minutes * 60
    trained, wall, step, losses = 0.0, 0.0, 0, []
    next_eval = args.eval_every_min * 60
    rows = []
    while True:
        tick, wall_tick = core_seconds(args.threads), time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(args.lr, trained / budget)
        index = torch.randint(len(pool), (args.batch,))
        x1 = pool_latents[index]
        texts = [pool_answers[i] if torch.rand(()) > 0.1 else None for i in index.tolist()]
        states, mask = text_encoder(texts)
        t = torch.sigmoid(torch.randn(args.batch))  # logit-normal: most steps at mid noise levels
        x0 = torch.randn_like(x1)
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            velocity = dit(xt, t, states, mask).sample
        loss = F.mse_loss(velocity.float(), x1 - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            # EMA warms up with the step count so early evaluations are not dominated by the random init.
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        step += 1
        losses.append(loss.item())
        trained += core_seconds(args.threads) - tick
        wall += time.perf_counter() - wall_tick
        # An evaluation point just short of the end would duplicate the final one.
        due = trained >= next_eval and budget - next_eval >= 0.5 * args.eval_every_min * 60
        if due or trained >= budget:
            next_eval += args.eval_every_min * 60
            tick = time.perf_counter()
            row, images = evaluate(ema_dit, ema_text, codec, eval_samples, detector, args.sample_steps, args.cfg,
                                   latent_shape, args.seed, args.bf16)
            row = {"minutes": round(trained / 60, 2), "wall_min": round(wall / 60, 2), "step": step,
                   "samples_per_s": round(step * args.batch / trained, 1),
                   "loss": round(sum(losses[-50:]) / len(losses[-50:]), 4), **row,
                   "eval_s": round(time.perf_counter() - tick, 1), "codec_ceiling": round(ceiling, 3)}
            rows.append(row)
            curve.write(json.dumps(row) + "\n")
            curve.flush()
            print(json.dumps(row), flush=True)
            if trained >= budget:
                break
    curve.close()
    if args.save_images:
        folder = out.with_suffix("")
        folder.mkdir(exist_ok=True)
        for i, (sample, image) in enumerate(itertools.islice(zip(eval_samples, images), 64)):
            image.save(folder / f"{i:03d}_{sample.spec.tag}.png")
    print(f"\n{'min':>6} {'step':>6} {'loss':>7} {'comp':>6} {'word':>6} {'text':>6}")
    for row in rows:
        print(f"{row['minutes']:6.1f} {row['step']:6d} {row['loss']:7.4f} {row['composition']:6.3f} "
              f"{row.get('text_word_acc', math.nan):6.3f} {row.get('text_exact', math.nan):6.3f}")


if __name__ == "__main__":
    main()
