"""Does a nano DiT fit the prompts it trained on? Oracle instructions on the train split vs the test split.

The DiT draws from the world's answer (the instruction the MLLM should write), through the no-think
template as in stages 2 and 3, with the input images for edits; the world judge scores each image. So the
MLLM's thinking plays no part: low scores on the *train* split mean the DiT underfits its own data (more
capacity or compute is the lever), a gap between train and test means it fails to generalise. With
``--swap-samples``, it also measures which words of the instruction the DiT reads at all
(:func:`nano_common.swap_sensitivity`). ``--context thought`` encodes the answer where a think-mode call has
it instead, after the prompt and the world's thought (``ThinkGenMLLM.encode_thought``): the gap between the
two contexts is what a DiT trained on the template alone loses when the MLLM thinks.

    python benchmarks/nano_dit_fit.py --model nano -n 100 [--context thought] [--val-samples 50] [--swap-samples 60]
"""

from __future__ import annotations

import argparse
import time

import torch

from nano_common import swap_sensitivity, val_flow_loss
from thinkgen.pipeline import ThinkGenPipeline
from thinkgen.world.detect import DetectorConfig, WorldDetector
from thinkgen.world.scenarios import generate
from thinkgen.world.scene import get_preset
from thinkgen.world.score import score_spec

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="nano", help="pipeline folder, or 'nano' for the shipped model")
parser.add_argument("--scenarios", nargs="*", default=["composition", "text", "edit"],
                    help="scenarios whose answer needs no reasoning to draw")
parser.add_argument("-n", type=int, default=100, help="prompts per scenario and split")
parser.add_argument("--batch", type=int, default=4, help="prompts per pipeline call")
parser.add_argument("--context", choices=("template", "thought"), default="template",
                    help="encode the answer in the no-think template, or after the prompt and thought")
parser.add_argument("--val-samples", type=int, default=0,
                    help="also print the flow-matching loss on this many val samples per scenario (0: skip)")
parser.add_argument("--swap-samples", type=int, default=0,
                    help="also print how much the loss rises when a word, colour, shape, count or relation of the "
                         "instruction is swapped, over this many val samples per kind (0: skip)")
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)

pipeline = ThinkGenPipeline.from_pretrained(args.model)
world = get_preset("nano")
detector = WorldDetector(DetectorConfig.for_world(world))

print(f"{'scenario':<12} {'split':<6} {'exact':>6} {'credit':>7}")
start = time.perf_counter()
for scenario in args.scenarios:
    for split in ("train", "test"):
        exact = credit = 0.0
        for first in range(0, args.n, args.batch):
            indices = range(first, min(first + args.batch, args.n))
            samples = [generate(scenario, i, config=world, split=split) for i in indices]
            images = [s.input_images() for s in samples] if any(s.inputs for s in samples) else None
            answers = [s.answer for s in samples]
            if args.context == "thought":
                states = pipeline.mllm.encode_thought([s.instruction for s in samples],
                                                      [s.reasoning for s in samples], answers, images)
                drawn = pipeline(answers, images=images, seed=first, prompt_embeds=states.instruction_states,
                                 prompt_attention_mask=states.instruction_mask).images
            else:
                drawn = pipeline(answers, images=images, think=False, seed=first).images
            for sample, image in zip(samples, drawn):
                result = score_spec(image, sample.spec, detector)
                exact += result.correct
                credit += result.score
        print(f"{scenario:<12} {split:<6} {exact / args.n:>6.2f} {credit / args.n:>7.3f}", flush=True)
if args.val_samples:
    print(f"val flow loss {val_flow_loss(pipeline, args.val_samples):.4f} ({args.val_samples} per scenario)")
if args.swap_samples:
    ratios = swap_sensitivity(pipeline, args.swap_samples)
    print("loss with a swapped word / true loss (1.00: ignored): "
          + ", ".join(f"{kind} {ratio:.3f}" for kind, ratio in ratios.items()))
print(f"{time.perf_counter() - start:.0f} s")
