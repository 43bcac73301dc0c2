"""Sampling from the policy with a KV cache: G samples per prompt, temperature, top-k/top-p,
stop tokens, log-probs of the sampled tokens; jitted and deterministic under a key."""

from alignax.sampling.sampler import (
    Samples,
    cast_params,
    completions_text,
    filter_logits,
    generate,
    left_pad,
    sample_tokens,
)

__all__ = ["Samples", "cast_params", "completions_text", "filter_logits", "generate",
           "left_pad", "sample_tokens"]
