"""What an algorithm is to alignax: an `Algorithm` registry entry, and the pieces most
offline algorithms share (a language-model plan, task evaluation, HF export).

An algorithm plugs into the engine (`alignax.train.runner`) with a `setup(ctx) -> Plan`:
it builds its parameters and `loss_fn` from the `Context` and says which data, reference,
hooks and export it needs. Its `loss` section is a dict of variants: `loss.name` picks one
(`variants[name]` = that variant's keyword defaults), and every other key of the section must
be one of the variant's keywords.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from alignax import data, sharding
from alignax.config import ConfigError
from alignax.models import to_hf
from alignax.train.caches import cached_arrays
from alignax.train.context import Context, build_model
from alignax.train.evaluation import task_accuracy
from alignax.train.runner import Plan

LossVariants = Mapping[str, Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One entry of `alignax.algorithms.ALGORITHMS`.

    Attributes:
      name: the config's `algorithm`.
      data: what it trains on: "sft", "pairs", "unpaired" or "prompts" (online RL).
      variants: `loss.name` -> that variant's loss keywords with their defaults (the one
        source of the `loss` section's schema), or a callable `name -> defaults` raising
        `KeyError` for an unknown name (the DPO family's open registry).
      setup: `(ctx) -> runner.Plan`.
      reference: what it holds frozen: "none", "policy" (a reference copy of the start),
        "optional" (a reference only for some settings, e.g. a KL term) or "teachers".
      sections: the optional config sections it reads (`config.OPTIONAL_SECTIONS`).
      claims: the `config.CLAIMED_FIELDS` it reads.
      skeleton: `cfg -> module` whose parameters the checkpoint's exported part fills
        (`alignax convert`); save: `(module, directory, cfg)` writes the HF export.
      export_key: the key of the exported part in the trainable parameters (None = all).
      run: a trainer of several stages, replacing the single `runner.run` (ADPA+).
    """

    name: str
    data: str
    variants: LossVariants | Callable[[str], Mapping[str, Any]]
    setup: Callable[[Context], Plan]
    reference: str = "none"
    sections: tuple[str, ...] = ()
    claims: tuple[str, ...] = ()
    skeleton: Callable[[Any], nnx.Module] | None = None
    save: Callable[[nnx.Module, str, Any], None] | None = None
    export_key: str | None = None
    run: Callable | None = None

    def loss_defaults(self, name, *, field: str = "loss") -> dict[str, Any]:
        """The keyword defaults of variant `name`; ConfigError naming `{field}.name` if
        unknown."""
        try:
            if callable(self.variants):
                return dict(self.variants(name))
            return dict(self.variants[name])
        except (KeyError, TypeError):
            known = ("a TRL loss type or a comma-separated list of them"
                     if callable(self.variants) else ", ".join(self.variants))
            raise ConfigError(f"config field '{field}.name': algorithm {self.name!r} has no "
                              f"variant {name!r}; known: {known}") from None


def resolve_loss(algorithm: Algorithm, loss: Mapping[str, Any], *, source: str = "config",
                 field: str = "loss") -> dict[str, Any]:
    """The `loss` section (at `field`) with the variant's defaults filled; unknown keys are
    errors naming the field."""
    loss = dict(loss)
    if "name" not in loss:
        raise ConfigError(f"{source}: missing field '{field}.name'")
    name = loss.pop("name")
    defaults = algorithm.loss_defaults(name, field=field)
    unknown = sorted(set(loss) - set(defaults))
    if unknown:
        raise ConfigError(f"{source}: config field '{field}.{unknown[0]}' is not a keyword of "
                          f"{algorithm.name} (loss.name={name!r}); its keywords: "
                          f"{', '.join(sorted(defaults)) or 'none'}")
    return {"name": name, **defaults, **loss}


def loss_kwargs(cfg) -> dict[str, Any]:
    """The resolved `loss` section without `name`, as keyword arguments."""
    kw = dict(cfg.loss)
    kw.pop("name")
    return kw


# ------------------------------------------------------------------------------- LM plans

def lm_skeleton(cfg) -> nnx.Module:
    """The policy's transformer as `config.json` describes it, adapters included (for
    `alignax convert`)."""
    return build_model(cfg.model, seed=0, lora=cfg.lora)


def save_lm(module, out: str, cfg) -> None:
    del cfg
    to_hf(module, out)


def task_evaluator(ctx: Context, graphdef, prompts: list[str], *, key: Callable | None = None):
    """`state -> {"task_accuracy": ...}` greedy accuracy of the policy on the built-in task
    (None when the run trains on `data.path`); `key(params)` picks the policy's parameters."""
    if ctx.cfg.data.path:
        return None
    pick = key or (lambda params: params)

    def evaluate(state) -> dict[str, float]:
        model = nnx.merge(graphdef, pick(state.params))
        return {"task_accuracy": task_accuracy(model, ctx.tokenizer, prompts,
                                               max_new_tokens=ctx.limits.max_completion_length)}

    return evaluate


def precompute_arrays(ctx: Context, fn, params, rows, *, name: str, what: str, cache_dir: str,
                      extra: dict) -> dict:
    """`caches.cached_arrays` of `fn` over `rows` with the run's batch layout."""
    return cached_arrays(fn, params, rows, name=name, cache_dir=cache_dir,
                         pad_id=ctx.tokenizer.pad_id, buckets=ctx.buckets,
                         batch_size=ctx.batch_size, extra=extra, what=what, log=ctx.log)


PACKING = ("data.packing", "data.pack_width")
"""The config fields an algorithm claims when its loss accepts packed batches."""


def packing_plan(ctx: Context) -> dict[str, Any]:
    """`lm_plan` keywords for `data.packing`: the packed batch iterator (`data.pack_width`
    wide, grouped per micro-batch and split over the data-parallel devices) and a
    `packing/fill` metric (real tokens / token slots of each step's batch); {} when off."""
    if not ctx.cfg.data.packing:
        return {}
    iterator = data.packed_iterator(pack_width=ctx.cfg.data.pack_width,
                                    num_microbatches=ctx.micro,
                                    data_parallel=sharding.data_parallel_size(ctx.mesh))
    return {"iterator": iterator,
            "batch_metrics": lambda batch: {"packing/fill": data.packing.fill(batch)}}


def lm_plan(ctx: Context, *, kind: str, loss_fn_for: Callable, model=None, reference=None,
            arrays: Callable | None = None, save=to_hf, iterator=None, **plan_kw) -> Plan:
    """The plan of an offline algorithm that trains one module on tokenised rows.

    Args:
      ctx: the run's context.
      kind: the data kind ("sft", "pairs", "unpaired").
      loss_fn_for: `graphdef -> loss_fn`.
      model: the module to train (default: `ctx.model()`).
      reference: `Plan.reference` ("copy" for a frozen copy of the start, or None).
      arrays: `(graphdef, params, rows) -> (train arrays, eval arrays)` per-row arrays added
        to the batches (e.g. precomputed reference log-probs), or None.
      save: `(module, directory)` writing the export.
      iterator: the batch iterator class for `ctx.batches` (default `data.BatchIterator`).
      plan_kw: more `Plan` fields.
    """
    rows = ctx.rows(functools.partial(ctx.examples, kind))
    model = model if model is not None else ctx.model()
    graphdef, params = nnx.split(model)
    train_arrays, eval_arrays = arrays(graphdef, params, rows) if arrays else (None, None)
    plan_kw.setdefault("evaluate", task_evaluator(ctx, graphdef,
                                                  ctx.eval_prompts(rows.eval_examples)))
    batches = functools.partial(ctx.batches, **({"iterator": iterator} if iterator else {}))
    return Plan(
        params=params, loss_fn=loss_fn_for(graphdef),
        data=batches(rows.train, arrays=train_arrays), reference=reference,
        ref_dtype=ctx.cfg.reference.dtype if reference else "",
        eval_batches=(lambda: batches(rows.eval, shuffle=False, arrays=eval_arrays))
        if rows.eval else None,
        export=lambda p, out: save(nnx.merge(graphdef, p), out), **plan_kw)
