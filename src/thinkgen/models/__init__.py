"""The ThinkGen model components: the MLLM wrapper, VGI-refine, the DiT and the image codec."""
