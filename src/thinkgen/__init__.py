"""thinkgen: think-driven visual generation (ThinkGen, arXiv 2512.23568)."""

__version__ = "0.1.0"
