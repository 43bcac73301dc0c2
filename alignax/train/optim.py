"""Optax optimizers from keyword arguments or a config dict: AdamW, warmup + decay, clipping."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optax


def _cosine(*, learning_rate, decay_steps, end_learning_rate):
    return optax.cosine_decay_schedule(
        learning_rate, decay_steps, alpha=end_learning_rate / learning_rate if learning_rate
        else 0.0)


def _linear(*, learning_rate, decay_steps, end_learning_rate):
    return optax.linear_schedule(learning_rate, end_learning_rate, decay_steps)


def _constant(*, learning_rate, decay_steps, end_learning_rate):
    del decay_steps, end_learning_rate
    return optax.constant_schedule(learning_rate)


DECAYS: dict[str, Callable[..., optax.Schedule]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def make_schedule(*, learning_rate: float, total_steps: int | None = None,
                  warmup_steps: int = 0, decay: str = "cosine",
                  end_learning_rate: float = 0.0) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then `decay`.

    Args:
      learning_rate: peak learning rate.
      total_steps: steps of the whole run (warmup included); needed unless `decay="constant"`.
      warmup_steps: linear warmup length.
      decay: a key of `DECAYS` (`cosine`, `linear`, `constant`).
      end_learning_rate: value reached at `total_steps` by `cosine` and `linear`.
    Returns:
      `step -> learning rate`.
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; choose one of {sorted(DECAYS)}")
    if decay != "constant" and total_steps is None:
        raise ValueError(f"decay={decay!r} needs total_steps")
    decay_steps = max(1, (total_steps or 0) - warmup_steps)
    after = DECAYS[decay](learning_rate=learning_rate, decay_steps=decay_steps,
                          end_learning_rate=end_learning_rate)
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(*, learning_rate: float = 1e-5, total_steps: int | None = None,
                   warmup_steps: int = 0, decay: str = "cosine",
                   end_learning_rate: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0,
                   weight_decay_mask: Any = None, max_grad_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with warmup + decay and global-norm clipping.

    Args:
      learning_rate, total_steps, warmup_steps, decay, end_learning_rate: see `make_schedule`.
      b1, b2, eps: Adam moments' decay rates and denominator epsilon.
      weight_decay: decoupled weight decay coefficient.
      weight_decay_mask: optax mask (pytree of bools or `params -> pytree`); None = all.
      max_grad_norm: clip the update's global norm to this first; None = no clipping.
    Returns:
      an `optax.GradientTransformation`; its state mirrors the parameter tree (`mu`, `nu`).
    """
    schedule = make_schedule(learning_rate=learning_rate, total_steps=total_steps,
                             warmup_steps=warmup_steps, decay=decay,
                             end_learning_rate=end_learning_rate)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                        mask=weight_decay_mask)
    if max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


def optimizer_from_config(config: Mapping[str, Any], *,
                          total_steps: int | None = None) -> optax.GradientTransformation:
    """`make_optimizer(**config)` for a config's `optim` section; unknown keys are errors.

    `total_steps` (usually `train.steps`) is used when the section does not set it. An optional
    `name` key must be `"adamw"`.
    """
    config = dict(config)
    name = config.pop("name", "adamw")
    if name != "adamw":
        raise ValueError(f"optim.name={name!r}: only 'adamw' is supported")
    known = set(make_optimizer.__kwdefaults__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown optim keys {unknown}; known keys are {sorted(known)}")
    config.setdefault("total_steps", total_steps)
    return make_optimizer(**config)


def schedule_from_config(config: Mapping[str, Any], *,
                         total_steps: int | None = None) -> optax.Schedule:
    """The learning-rate schedule of an `optim` section (for logging `learning_rate`)."""
    keys = ("learning_rate", "total_steps", "warmup_steps", "decay", "end_learning_rate")
    kwargs = {k: config[k] for k in keys if k in config}
    kwargs.setdefault("learning_rate", make_optimizer.__kwdefaults__["learning_rate"])
    kwargs.setdefault("total_steps", total_steps)
    return make_schedule(**kwargs)
