"""Best-of-N: sample N completions per prompt, keep the one a scorer likes best.

Scorers map `(prompt_ids [R, P] left-padded, prompt_mask, tokens [R, N], mask [R, N], texts)`
to `[R]` scores (R = B x N candidates, prompt-major):

* `verifier_scorer(fn, prompts)`: a reward function with TRL's signature
  (`fn(prompts, completions) -> list[float | None]`, e.g. `rewards.get_reward_function(
  "arithmetic_correct")`); None scores as -inf.
* `reward_model_scorer(graphdef, params)`: a reward model's score of prompt + completion.
* `implicit_reward_scorer(policy, reference, beta)`: DPO's implicit reward
  beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, Eq. 5), summed over the
  completion's tokens.

Compute is counted in forward tokens (one token through one model): the prompt once per
prompt (its cache is shared by the N samples), every decoded token, and each scoring model's
forward over prompt + completion. `forward_tokens_per_output_token` divides that by the chosen
completions' tokens; plain sampling of one completion costs about (P + n) / n.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models.logprobs import completion_logps
from alignax.sampling.generation import generate
from alignax.sampling.sampler import left_pad, sequences

Scorer = Callable[..., np.ndarray]


@dataclasses.dataclass
class BestOfN:
    """Attributes: `tokens`, `mask` `[B, N]` of the chosen completions; `scores` `[B, n]` of
    every candidate; `chosen` `[B]` its index; `forward_tokens` spent in all; and
    `forward_tokens_per_output_token`."""

    tokens: np.ndarray
    mask: np.ndarray
    scores: np.ndarray
    chosen: np.ndarray
    forward_tokens: int
    forward_tokens_per_output_token: float


def select_best(scores: np.ndarray) -> np.ndarray:
    """`[B, n]` scores -> `[B]` index of the best (NaN never wins; ties: the first).

    >>> select_best(np.array([[0.1, 0.7, 0.7], [np.nan, -1.0, -2.0]])).tolist()
    [1, 1]
    """
    s = np.where(np.isnan(scores), -np.inf, scores)
    return np.argmax(s, axis=-1)


def verifier_scorer(fn, prompts: Sequence) -> Scorer:
    """Scores decoded completions with a TRL-signature reward function (0 forward tokens)."""

    def score(prompt_ids, prompt_mask, tokens, mask, texts):
        n = len(texts) // len(prompts)
        out = fn([p for p in prompts for _ in range(n)], list(texts))
        return np.array([-np.inf if v is None else float(v) for v in out], np.float64)

    score.forward_tokens = lambda rows, completion_tokens: 0
    return score


def reward_model_scorer(graphdef, params) -> Scorer:
    """Scores prompt + completion rows with a reward model (`rewards.load_scorer`)."""
    from alignax.rewards.model import score_sequences

    def score(prompt_ids, prompt_mask, tokens, mask, texts):
        ids, attn = sequences(prompt_ids, prompt_mask, tokens, mask)
        return np.asarray(score_sequences(graphdef, params, ids, attn), np.float64)

    score.forward_tokens = lambda rows, completion_tokens: rows + completion_tokens
    return score


def implicit_reward_scorer(policy, reference, beta: float, *, chunk_size: int = 128
                           ) -> Scorer:
    """DPO's implicit reward of each candidate: beta * sum_t (log pi - log pi_ref)."""
    graphdefs = (nnx.graphdef(policy), nnx.graphdef(reference))

    @jax.jit
    def logps(params, ref_params, ids, attn, completion):
        out = []
        for graphdef, p in zip(graphdefs, (params, ref_params)):
            tok, m = completion_logps(nnx.merge(graphdef, p), ids, attn, completion,
                                      chunk_size=chunk_size, right_padded=False)
            out.append(jnp.sum(tok * m, axis=-1))
        return out

    def score(prompt_ids, prompt_mask, tokens, mask, texts):
        ids, attn = sequences(prompt_ids, prompt_mask, tokens, mask)
        completion = np.concatenate([np.zeros_like(prompt_mask), mask], -1)
        pol, ref = logps(nnx.state(policy), nnx.state(reference), ids, attn, completion)
        return beta * (np.asarray(pol, np.float64) - np.asarray(ref, np.float64))

    score.forward_tokens = lambda rows, completion_tokens: 2 * (rows + completion_tokens)
    return score


def best_of_n(model, prompts: Sequence[Sequence[int]], *, n: int, scorer: Scorer,
              tokenizer, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
              top_p: float = 1.0, seed: int = 0, stop_ids: tuple[int, ...] | None = None,
              batch_size: int | None = None) -> BestOfN:
    """Best of `n` samples per token-id prompt under `scorer` (see the module docstring)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    eos, pad = int(tokenizer.eos_id), int(tokenizer.pad_id)
    stops = stop_ids or (eos,)
    out = generate(model, [list(p) for p in prompts], max_new_tokens=max_new_tokens,
                   eos_id=eos, pad_id=pad, temperature=temperature, top_k=top_k, top_p=top_p,
                   num_samples=n, stop_ids=stops, seed=seed, batch_size=batch_size)
    from alignax.sampling import decode_completions

    texts = decode_completions(tokenizer, out.tokens, out.mask, stop_ids=stops)
    ids, pmask = left_pad([list(p) for p in prompts for _ in range(n)], pad)
    scores = np.asarray(scorer(ids, pmask, out.tokens, out.mask, texts)).reshape(-1, n)
    chosen = select_best(scores)
    b = len(prompts)
    pick = np.arange(b) * n + chosen
    tokens, mask = out.tokens[pick], out.mask[pick]
    prompt_tokens = sum(len(p) for p in prompts)
    decoded = int(out.mask.sum())
    scoring = getattr(scorer, "forward_tokens", lambda rows, completion_tokens: 0)
    spent = prompt_tokens + decoded + int(scoring(int(pmask.sum()), decoded))
    return BestOfN(tokens, mask, scores, chosen, spent,
                   spent / max(int(mask.sum()), 1))
