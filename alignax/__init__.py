"""alignax: pure, jitted, sharded alignment algorithms for language models in JAX."""

__version__ = "0.1.0"
