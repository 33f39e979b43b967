"""thinkgen: think-driven visual generation (ThinkGen, arXiv 2512.23568)."""

__version__ = "0.1.0"

# Weight dtypes by name: recipes, command lines and the server take these.
DTYPES = ("float32", "bfloat16", "float16")
