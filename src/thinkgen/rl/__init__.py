"""SepGRPO, ThinkGen's RL recipe: MLLM-GRPO (:mod:`.mllm_grpo`, stage 4), DiT-GRPO (:mod:`.dit_grpo`,
stage 5) and their schedule (:mod:`.sepgrpo`). Configs live in :mod:`.config`; recipes run with
``thinkgen train --recipe FILE`` (``trainer = "mllm_grpo" | "dit_grpo" | "sepgrpo"``)."""
