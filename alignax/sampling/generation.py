"""`generate`: sampling from token-id prompts on the host, in batches (`sample_tokens`) or
through the continuous-batching engine (`sample_continuous`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.heads import check_head_weights
from alignax.sampling.engine import sample_continuous
from alignax.sampling.sampler import Samples, left_pad, sample_tokens


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 0.0, seed: int = 0, prompt_width: int | None = None,
             num_samples: int = 1, top_k: int = 0, top_p: float = 1.0,
             stop_ids: tuple[int, ...] | None = None, head_weights=None,
             batch_size: int | None = None, slots: int = 0) -> Samples:
    """Samples completions for token-id prompts: the host-side entry to `sample_tokens`.

    Args:
      model: an NNX `Transformer`, or a multi-head model with `head_weights`.
      prompts: B lists of prompt token ids.
      max_new_tokens: N.
      eos_id, pad_id: stop and padding tokens.
      temperature: 0 = greedy.
      seed: sampling seed; with `batch_size`, batch i draws with seed `seed + i`.
      prompt_width: pad prompts to this width (default: the longest prompt).
      num_samples: G completions per prompt.
      top_k, top_p: see `filter_logits`.
      stop_ids: tokens that end a row; default `(eos_id,)`.
      head_weights: `[H]` mixing weights of a multi-head model (`models.check_head_weights`).
      batch_size: sample `batch_size` prompts per call, the last call padded with copies of
        its first prompt, so every call has one shape and the sampler compiles once.
      slots: > 0: every prompt through the continuous-batching engine's `slots` decode rows
        instead (`sampling.engine`; `batch_size` unused): rows that stop early free their
        slot for the next sample. Request j draws with `fold_in(key(seed), j)`, so the samples
        differ from the batched ones for the same seed.
    Returns:
      `Samples` of numpy `[B * G, N]` arrays (rows prompt-major); the stop token is included
      with mask 1, slots after it are padding.
    """
    stops = tuple(int(s) for s in (stop_ids if stop_ids is not None else (eos_id,)))
    if head_weights is not None:
        head_weights = jnp.asarray(check_head_weights(head_weights, model.num_heads))
    width = prompt_width or max(len(x) for x in prompts)
    if slots:
        return sample_continuous(
            model, prompts, jax.random.key(seed), slots=int(slots),
            max_new_tokens=int(max_new_tokens), eos_id=eos_id, pad_id=pad_id,
            num_samples=int(num_samples), temperature=float(temperature), top_k=int(top_k),
            top_p=float(top_p), stop_ids=stops, prompt_width=width,
            head_weights=head_weights)[0]
    graphdef, params = nnx.split(model)
    size = batch_size or len(prompts)
    out = []
    for i, start in enumerate(range(0, len(prompts), size)):
        chunk = [list(x) for x in prompts[start:start + size]]
        n = len(chunk)
        ids, mask = left_pad(chunk + [chunk[0]] * (size - n), pad_id, width)
        got = sample_tokens(graphdef, params, ids, mask,
                            jax.random.key(seed + i if batch_size else seed), head_weights,
                            num_samples=int(num_samples), max_new_tokens=int(max_new_tokens),
                            temperature=float(temperature), top_k=int(top_k),
                            top_p=float(top_p), stop_ids=stops, pad_id=int(pad_id))
        out.append([np.asarray(x)[:n * num_samples] for x in got])
    return Samples(*(np.concatenate(parts) for parts in zip(*out)))
