"""Sampling from the policy with a KV cache: G samples per prompt (sharing the prompt's cache),
temperature, top-k/top-p, stop tokens, log-probs of the sampled tokens, multi-head mixtures;
jitted and deterministic under a key. Continuous batching: `sample_continuous` (engine.py)."""

from alignax.sampling.engine import EngineStats, run_engine, sample_continuous
from alignax.sampling.generation import generate
from alignax.sampling.heads import Sweep, sweep_head_weights, weight_grid
from alignax.sampling.sampler import (
    Samples,
    cast_params,
    decode_completions,
    filter_logits,
    left_pad,
    sample_tokens,
    sequences,
)

__all__ = ["EngineStats", "Samples", "Sweep", "cast_params", "decode_completions",
           "filter_logits", "generate", "left_pad", "run_engine", "sample_continuous",
           "sample_tokens", "sequences", "sweep_head_weights", "weight_grid"]
