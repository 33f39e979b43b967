#!/usr/bin/env bash
# ThinkGen-Nano from scratch by the short path, on a 2-core CPU machine, one command:
#   recipes/nano/short_path.sh [OUTPUT_DIR] [SEED]   (defaults runs/nano-short and 0; needs `thinkgen` and `torchrun`)
# 1. the palette codec (codec.toml), one process, then the MLLM (mllm.toml), two processes;
# 2. the DiT with every mark from its first step (stage2_marks.toml), two processes;
# 3. MLLM-GRPO on reflection and reasoning edits (reflection_grpo.toml), DiT frozen, two processes;
# 4. DiT-GRPO on composition (composition_dit_grpo.toml), MLLM frozen, two processes.
# Each stage resumes from its last checkpoint when the script is run again, and a finished stage (its
# final/ exists) is skipped; a failing stage stops the script (its log: OUTPUT_DIR/NAME.log). The wall time
# of each stage goes to OUTPUT_DIR/wall_times.tsv. The result,
# OUTPUT_DIR/composition_dit_grpo/final, is a pipeline folder: thinkgen generate --model it "…".
# SEED reseeds every stage (weights, noise and the world samples it trains on; the RL stages draw their
# prompts at SEED + 1 and SEED + 2, as the recipes do at 0): two seeds give the spread between two runs.
set -euo pipefail

out="${1:-runs/nano-short}"
seed="${2:-0}"
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "SEED must be a non-negative integer, got '$seed'" >&2; exit 2; }
recipes="$(dirname "$0")"
mkdir -p "$out"
export OMP_NUM_THREADS=1  # one thread per process: the processes, not threads, share the cores

timed() {  # timed NAME COMMAND...: run COMMAND unless NAME's final/ exists, and log its wall time
    local name="$1"; shift
    if [[ -e "$out/$name/final" ]]; then
        echo "$name: done, skipped"
        return
    fi
    local start=$SECONDS
    "$@" > "$out/$name.log" 2>&1
    printf '%s\t%d\n' "$name" $((SECONDS - start)) >> "$out/wall_times.tsv"
}

# The codec trains in one process; the MLLM, like the DiT, on two (torchrun, gloo).
timed codec thinkgen train --recipe "$recipes/codec.toml" --set run.output_dir="\"$out/codec\"" \
    --set run.seed="$seed" --set data.seed="$seed"
timed mllm torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe "$recipes/mllm.toml" \
    --set run.output_dir="\"$out/mllm\"" --set data.micro_batch_size=16 --set data.num_workers=0 \
    --set run.seed="$seed" --set data.sources.0.seed="$seed"
timed stage2_marks torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe "$recipes/stage2_marks.toml" \
    --set run.output_dir="\"$out/stage2_marks\"" --set model.mllm="\"$out/mllm/final/mllm\"" \
    --set model.codec="\"$out/codec/final\"" \
    --set data.micro_batch_size=16 --set data.num_workers=0 --set run.sample_every=0 \
    --set run.seed="$seed" --set data.sources.0.seed="$seed"
# The RL stages split each step's prompts between the two processes (README, "Reinforcement learning").
timed reflection_grpo torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe "$recipes/reflection_grpo.toml" \
    --set run.output_dir="\"$out/reflection_grpo\"" --set model.pipeline="\"$out/stage2_marks/final\"" \
    --set run.seed="$seed" --set prompts.seed=$((seed+1))
timed composition_dit_grpo torchrun --nproc_per_node 2 -m thinkgen.cli train --recipe "$recipes/composition_dit_grpo.toml" \
    --set run.output_dir="\"$out/composition_dit_grpo\"" --set model.pipeline="\"$out/reflection_grpo/final\"" \
    --set run.seed="$seed" --set prompts.seed=$((seed+2))
