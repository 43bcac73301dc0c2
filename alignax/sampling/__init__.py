"""Sampling from the policy with a KV cache (jitted; greedy or temperature)."""

from alignax.sampling.sampler import completions_text, generate, left_pad

__all__ = ["completions_text", "generate", "left_pad"]
