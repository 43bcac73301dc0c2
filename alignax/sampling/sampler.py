"""A jitted sampler over the model's KV cache: prefill, then one token per `lax.scan` step.

Prompts are left-padded so every row's last prompt token is in the same slot. Each step picks a
token (greedy at temperature 0, else a categorical draw from `logits / temperature`), records
its log-prob under the sampling distribution, and stops a row at its EOS: later slots hold
`pad_id` with mask 0. Deterministic under a seed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.cache import init_cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature",
                                             "eos_id", "pad_id"))
def _sample(graphdef, params, prompt_ids, prompt_mask, rng, *, max_new_tokens: int,
            temperature: float, eos_id: int, pad_id: int):
    model = nnx.merge(graphdef, params)
    b, p = prompt_ids.shape
    cache = init_cache(model.config, b, p + max_new_tokens)
    hidden, cache = model.hidden_states(prompt_ids, prompt_mask, cache=cache)
    logits = model.logits(hidden[:, -1:])[:, 0]

    def body(carry, key):
        logits, cache, done = carry
        scaled = logits / temperature if temperature > 0 else logits
        logp_all = jax.nn.log_softmax(scaled, axis=-1)
        token = (jax.random.categorical(key, scaled) if temperature > 0
                 else jnp.argmax(logits, axis=-1)).astype(jnp.int32)
        token = jnp.where(done, pad_id, token)
        logp = jnp.where(done, 0.0, jnp.take_along_axis(logp_all, token[:, None], -1)[:, 0])
        live = ~done
        hidden, cache = model.hidden_states(token[:, None], live[:, None].astype(jnp.int32),
                                            cache=cache)
        done = done | (token == eos_id)
        return (model.logits(hidden)[:, 0], cache, done), (token, logp, live)

    keys = jax.random.split(rng, max_new_tokens)
    _, (tokens, logps, live) = jax.lax.scan(body, (logits, cache, jnp.zeros(b, bool)), keys)
    return tokens.T, logps.T, live.T.astype(jnp.int32)


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None):
    """`[B, P]` left-padded ids and mask (P = the longest prompt, or `width`)."""
    width = width or max(len(x) for x in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, x in enumerate(prompts):
        x = x[-width:]
        if x:
            ids[i, -len(x):] = x
            mask[i, -len(x):] = 1
    return ids, mask


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 0.0, seed: int = 0, prompt_width: int | None = None):
    """Samples completions for token-id prompts.

    Args:
      model: an NNX `Transformer`.
      prompts: B lists of prompt token ids.
      max_new_tokens: N.
      eos_id, pad_id: stop and padding tokens.
      temperature: 0 = greedy.
      seed: sampling seed.
      prompt_width: pad prompts to this width (fewer compiles across batches).
    Returns:
      (tokens `[B, N]`, logps `[B, N]` under the sampling distribution, mask `[B, N]`):
      numpy; the EOS token is included with mask 1, slots after it are padding.
    """
    graphdef, params = nnx.split(model)
    ids, mask = left_pad(prompts, pad_id, prompt_width)
    out = _sample(graphdef, params, ids, mask, jax.random.PRNGKey(seed),
                  max_new_tokens=max_new_tokens, temperature=float(temperature),
                  eos_id=int(eos_id), pad_id=int(pad_id))
    return tuple(np.asarray(x) for x in out)


def completions_text(tokenizer, tokens, mask) -> list[str]:
    """Decodes sampled tokens (up to and excluding EOS) to text."""
    out = []
    for row, m in zip(tokens, mask):
        ids = [int(t) for t, keep in zip(row, m) if keep and int(t) != tokenizer.eos_id]
        out.append(tokenizer.decode(ids))
    return out
