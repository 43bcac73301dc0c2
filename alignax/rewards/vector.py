"""Vector rewards: one entry per objective (reward function or reward model), and their
weighted combination.

    vec = reward_vector([("correct", arithmetic_correct), ("short", brevity)], prompts, texts)
    r = combine_rewards(vec, weights=[1.0, 0.1])      # [N]: TRL's sum_then_normalize input

Unscorable entries are NaN; the combination is TRL 1.16's `nansum(w * r)`, except that a
completion no objective could score stays NaN (TRL gives it 0), so group statistics leave it
out and its advantage is 0 (`losses.grpo_advantages`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alignax.rewards.functions import RewardFn


def reward_vector(functions: Sequence[tuple[str, RewardFn]], prompts: Sequence,
                  completions: Sequence[str], *, timeout: float = 0.0,
                  failures: dict[str, int] | None = None, log=print, **kwargs) -> np.ndarray:
    """Scores every completion with every reward function.

    With `timeout > 0` the functions run concurrently in threads (a slow judge or sandbox
    does not serialise the others) and a call that takes longer gives NaN; a function that
    raises gives NaN too. NaN rewards are left out of the group statistics (never a silent 0)
    and counted in `failures[name]` (the trainer logs `rewards/{name}/failures`).

    Args:
      functions: K `(name, fn)` pairs.
      prompts: N prompts (as given to the trainer; repeated once per sample).
      completions: N decoded completions.
      timeout: seconds per call (0 = no limit, called in turn in this thread).
      failures: counts of failed calls per name, updated in place.
      log: where the first failure of each function is reported.
      **kwargs: per-completion lists passed to every function (`answers`, `terminated`, ...).
    Returns:
      `[N, K]` float32 numpy, NaN where a function returned None, failed or timed out.
    Raises:
      ValueError: a function returned the wrong number of values (names it).
    """
    n = len(completions)
    out = np.full((n, len(functions)), np.nan, np.float32)
    call = lambda fn: list(fn(list(prompts), list(completions), **kwargs))
    if timeout > 0:
        pool = _pool(len(functions))
        pending = [pool.submit(call, fn) for _, fn in functions]
        results = [_wait(future, timeout) for future in pending]
    else:
        results = [_wait_inline(call, fn) for _, fn in functions]
    for k, ((name, _), (values, error)) in enumerate(zip(functions, results)):
        if error is not None:
            if failures is not None:
                failures[name] = failures.get(name, 0) + 1
                if failures[name] == 1:
                    log(f"reward function {name!r} failed ({error}); its rewards are NaN and "
                        "left out of the group statistics (counted as rewards/"
                        f"{name}/failures)")
            continue
        if len(values) != n:
            raise ValueError(f"reward function {name!r} returned {len(values)} values for "
                             f"{n} completions")
        out[:, k] = [np.nan if v is None else float(v) for v in values]
    return out


_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def _pool(size: int) -> concurrent.futures.ThreadPoolExecutor:
    if size not in _POOLS:
        _POOLS[size] = concurrent.futures.ThreadPoolExecutor(max_workers=2 * size,
                                                             thread_name_prefix="reward")
    return _POOLS[size]


def _wait(future, timeout: float):
    try:
        return future.result(timeout=timeout), None
    except concurrent.futures.TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except Exception as e:  # noqa: BLE001 - a user function: any error is a failed reward
        return None, f"{type(e).__name__}: {e}"


def _wait_inline(call, fn):
    try:
        return call(fn), None
    except Exception as e:  # noqa: BLE001 - a user function: any error is a failed reward
        return None, f"{type(e).__name__}: {e}"


def combine_rewards(rewards, weights) -> jax.Array:
    """Weighted sum over objectives, ignoring NaN entries (TRL `sum_then_normalize`).

    Args:
      rewards: `[..., K]` per-objective rewards (NaN = unscorable).
      weights: `[K]` weights.
    Returns:
      `[...]` sum_k w_k r_k over the scorable entries; NaN where none is scorable.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    valid = ~jnp.isnan(rewards)
    total = jnp.sum(jnp.where(valid, rewards * weights, 0.0), axis=-1)
    return jnp.where(jnp.any(valid, axis=-1), total, jnp.nan)


def vector_metrics(rewards, names: Sequence[str]) -> dict[str, float]:
    """TRL's `rewards/{name}/mean` and `rewards/{name}/std` (NaN entries left out).

    Args: rewards `[N, K]`; names K objective names. Returns: a dict of floats.
    """
    rewards = np.asarray(rewards, np.float64)
    out = {}
    for k, name in enumerate(names):
        col = rewards[:, k][~np.isnan(rewards[:, k])]
        out[f"rewards/{name}/mean"] = float(col.mean()) if col.size else float("nan")
        out[f"rewards/{name}/std"] = float(col.std(ddof=1)) if col.size > 1 else float("nan")
    return out
