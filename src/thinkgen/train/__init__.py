"""Supervised training of ThinkGen: the DiT stages 1-3 (:mod:`.sft`), the nano MLLM (:mod:`.mllm_sft`) and
the nano codec (:mod:`.codec`).

Recipes (``recipes/<scale>/*.toml``) fill the config dataclasses of :mod:`.config`; ``thinkgen train
--recipe FILE`` runs them. Everything distributed lives in :mod:`.distributed`.
"""
