"""World generation speed: samples per second per scenario on one core, rendering included.

    python benchmarks/world_speed.py                      # nano preset, train split, 2000 samples each
    python benchmarks/world_speed.py --preset full -n 500

Prints, per scenario, the rate of drawing samples alone and of drawing plus rendering every image
(inputs and target), so the render share is visible. Rendering is PIL, single-threaded.
"""

from __future__ import annotations

import argparse
import time

from thinkgen.world.scenarios import SCENARIOS, generate
from thinkgen.world.scene import PRESETS, get_preset


def _rate(num_samples: int, work) -> float:
    start = time.perf_counter()
    for index in range(num_samples):
        work(index)
    return num_samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nano", choices=list(PRESETS))
    parser.add_argument("--split", default="train")
    parser.add_argument("-n", "--num-samples", type=int, default=2000)
    args = parser.parse_args()
    config = get_preset(args.preset)

    def draw(scenario: str, index: int):
        return generate(scenario, index, config=config, split=args.split)

    def draw_and_render(scenario: str, index: int) -> None:
        sample = draw(scenario, index)
        sample.target_image()
        sample.input_images()

    print(f"preset={args.preset} split={args.split} canvas={config.canvas_px}px n={args.num_samples} per scenario")
    print(f"{'scenario':<16}{'draw/s':>10}{'draw+render/s':>16}")
    for scenario in SCENARIOS:
        # Distinct index ranges, so the second pass cannot reuse anything cached by the first.
        drawn = _rate(args.num_samples, lambda i: draw(scenario, i))
        rendered = _rate(args.num_samples, lambda i: draw_and_render(scenario, args.num_samples + i))
        print(f"{scenario:<16}{drawn:>10.0f}{rendered:>16.0f}")


if __name__ == "__main__":
    main()
