"""float32 compute asks for float32 matmuls (`Precision.HIGHEST`, so no TF32 on GPUs), bf16
compute keeps the backend default: checked in the lowered programs of the trainer's log-probs,
the sampler's decode, a full forward and the value/reward heads."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax.models import init_model, tiny_config
from alignax.models.heads import ValueHead
from alignax.models.logprobs import completion_logps
from alignax.sampling.sampler import sample_tokens


def _dots(text: str) -> tuple[int, int]:
    """(dot_general ops, those with HIGHEST precision) of a StableHLO module's text."""
    lines = [line for line in text.splitlines() if "dot_general" in line]
    return len(lines), sum(bool(re.search(r"precision.*HIGHEST", line)) for line in lines)


def _programs(dtype):
    model = init_model(tiny_config("llama", dtype=dtype), seed=0)
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.arange(2 * 8).reshape(2, 8) % 200 + 3, jnp.int32)
    mask = jnp.ones_like(ids)

    def logps(params):
        return completion_logps(nnx.merge(graphdef, params), ids, mask, mask, chunk_size=4)

    def sample(params):
        return sample_tokens(graphdef, params, ids, mask, jax.random.key(0),
                             max_new_tokens=3, stop_ids=(1,), pad_id=0)

    forward = lambda params: nnx.merge(graphdef, params)(ids, mask)
    yield from (jax.jit(f).lower(params).as_text() for f in (logps, sample, forward))
    head = ValueHead(tiny_config("llama", dtype=dtype), rngs=nnx.Rngs(0))
    hidden = jnp.ones((2, 8, 64), dtype)
    yield jax.jit(lambda h: head(h)).lower(hidden).as_text()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float32_matmuls_are_highest_precision(dtype):
    for text in _programs(dtype):
        dots, highest = _dots(text)
        assert dots > 0
        assert highest == (dots if dtype == "float32" else 0), (dots, highest)
