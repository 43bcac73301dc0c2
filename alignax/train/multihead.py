r"""MAH-DPO (MAHALO, arXiv 2510.01167): a shared trunk with one LM head per objective.

* **Model.** `MultiHeadLM` = a `Transformer` trunk (its final hidden states) + a `MultiLMHead`
  of H untied heads `[H, E, V]`, each the base (SFT) LM head plus N(0, noise_std^2) noise. The
  trunk's own LM head is dropped (the heads replace it), so no unused `[E, V]` parameter and
  no optimizer moments for it exist. With tied embeddings the heads are untied copies of the
  embedding and the input embedding stays as it is (the reference code instead perturbs the
  tied matrix in place, input embeddings included; alignax does not).
* **Reference.** The reference's H heads are the unperturbed base head, so its log-probs are
  head-independent: the reference *is* the base model. It is a frozen copy of the base
  `Transformer` in the train state, or its `[N, 2]` log-probs precomputed and cached on disk
  (`reference.precompute=True`, as DPO).
* **Data.** Every pair names its objective k (`objective` field, an index or a name from
  `data.objectives`); pair k trains head k only, the trunk learns from all heads. A pair
  labelled for several objectives (a preference vector: `objective: [0, 1]` or
  `preferences: [1, -1]`) appears once per objective (`data.multiobjective.expand_records`),
  as in the reference code's one-dataset-per-objective layout. Batches are balanced: B/H
  pairs of every objective, shuffled together (`BalancedBatchIterator`).
* **Loss.** `losses.mah_dpo_loss`: mean over the heads present in the batch of each head's
  mean DPO loss (sigmoid / cDPO label smoothing / summed IPO). With one head it is exactly DPO.
  Chosen and rejected go through one concatenated `[2B, S]` trunk forward; the log-probs of
  every head come from the chunked `multi_head_token_logps` (never a float32 `[H, 2B, S, V]`).
* **Metrics** per objective as the reference code names them: `{objective}/loss`,
  `{objective}/rewards/{chosen,rejected,accuracies,margins}`, `{objective}/logps/{chosen,
  rejected}`, `{objective}/examples`, `{objective}/examples_seen`, with the TRL-named batch
  totals (`loss`, `rewards/margins`, ...). On the synthetic task, `eval/{head}_head/{objective}`
  is the greedy score of each head alone and `eval/uniform/{objective}` of the uniform mix,
  from one vmapped sampling program (`sampling.heads.sweep_head_weights`).
* **Export.** `WORKDIR/hf` is a plain HF directory whose LM head is the mixture
  `sum_k w_k W_k` (`heads.export_weights`, default uniform, the reference's default
  `generate_ensemble`), so `--config.model.path=WORKDIR/hf` loads it as an ordinary model; the
  H heads sit beside it in `WORKDIR/hf/heads/heads.safetensors` (`load_multihead`), and
  `alignax sample --model WORKDIR --head-weights 0.7,0.3` samples any other mixture.
* **Departures from the reference code.** The noise of all H heads comes from one key
  (`heads.seed`), not seed 42 + 100 k per head. `heads.trunk_lr_scale` (default 1, the
  reference) scales the trunk's updates relative to the heads' (0 = frozen trunk).

The trainer (`run`, dispatched by `loop.RUNNERS["mah_dpo"]`) and its config live in
`multihead_run.py` and `experiments/configs/mah_dpo.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax import losses
from alignax.data.loader import BatchIterator
from alignax.models import MultiLMHead, Transformer, from_hf, multi_head_token_logps, to_hf
from alignax.models.layers import param
from alignax.sampling.heads import check_head_weights, mixed_head
from alignax.train.objectives import Objective, reference_logps_fn

HEADS_DIR = "heads"  # beside, not among, the trunk's safetensors (from_hf reads *.safetensors)
HEADS_FILE = os.path.join(HEADS_DIR, "heads.safetensors")
HEADS_META = os.path.join(HEADS_DIR, "heads.json")


class MultiHeadLM(nnx.Module):
    """A trunk and H LM heads: `model(input_ids, attention_mask) -> [H, B, S, V]` logits.

    Build it from a base LM with `MultiHeadLM.from_base`; train it with `mah_dpo_objective`;
    sample with `alignax.sampling.heads` (mixed head logits).
    """

    def __init__(self, trunk: Transformer, heads: MultiLMHead):
        self.trunk = trunk
        self.heads = heads

    @classmethod
    def from_base(cls, base: Transformer, num_heads: int, *, noise_std: float = 1e-3,
                  seed: int = 42) -> MultiHeadLM:
        """H heads from `base`'s LM head + N(0, noise_std^2) noise; `base` is left unchanged.

        Args:
          base: the SFT model (also the reference).
          num_heads: H.
          noise_std: the reference code's 0.001 (0 = exact copies).
          seed: noise seed (the reference code's 42).
        """
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        trunk = nnx.merge(*nnx.split(base))  # new module objects, same (immutable) arrays
        heads = MultiLMHead(base.lm_head_weight(), num_heads, rngs=nnx.Rngs(seed),
                            noise_std=noise_std, param_dtype=base.config.weight_dtype)
        if not trunk.config.tie_word_embeddings:
            del trunk.lm_head  # replaced by the heads
        return cls(trunk, heads)

    @property
    def num_heads(self) -> int:
        return self.heads.num_heads

    def hidden_states(self, input_ids, attention_mask=None, **kwargs):
        """The trunk's final hidden states `[B, S, E]` (see `Transformer.hidden_states`)."""
        return self.trunk.hidden_states(input_ids, attention_mask, **kwargs)

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        """`[B, S]` ids -> `[H, B, S, V]` float32 logits of every head (small shapes only)."""
        hidden, _ = self.hidden_states(input_ids, attention_mask)
        return self.heads(hidden)

    def mixed_logits(self, input_ids, attention_mask, weights) -> jax.Array:
        """`[B, S, V]` logits of the mixture `sum_k w_k z_k` (weights `[H]`, normalised)."""
        hidden, _ = self.hidden_states(input_ids, attention_mask)
        head = mixed_head(self.heads.weight[...], weights).astype(hidden.dtype)
        return jnp.einsum("bse,ev->bsv", hidden, head, preferred_element_type=jnp.float32)

    def as_lm(self, weights=None) -> Transformer:
        """A plain `Transformer` (untied) whose LM head is `sum_k w_k W_k` (host side).

        Args:
          weights: `[H]` mixing weights (normalised); None = uniform; one-hot = one head.
        """
        w = np.ones(self.num_heads, np.float32) if weights is None else weights
        w = check_head_weights(w, self.num_heads, field="heads.export_weights")
        lm = nnx.merge(*nnx.split(self.trunk))
        head = mixed_head(self.heads.weight[...], jnp.asarray(w))
        lm.config = _untied(lm.config)
        lm.lm_head = param(head.astype(lm.config.weight_dtype), ("embed", "vocab"))
        return lm


def _untied(config):
    return dataclasses.replace(config, tie_word_embeddings=False)


# ------------------------------------------------------------------------------ objective

def pair_head_logps(graphdef, params, batch, *, chunk_size: int = 128) -> jax.Array:
    """Summed log-probs of chosen and rejected under every head, one `[2B, S]` trunk forward.

    Args:
      graphdef, params: a `MultiHeadLM`.
      batch: `input_ids`, `attention_mask`, `completion_mask` `[B, 2, S]`.
    Returns:
      `[B, 2, H]` float32 summed completion log-probs (index 1: chosen, rejected).
    """
    model = nnx.merge(graphdef, params)
    b, two, s = batch["input_ids"].shape
    flat = lambda x: x.reshape(b * two, s)
    ids = flat(batch["input_ids"])
    # Right-padded rows (as `data.collate` builds them): causal attention alone keeps real
    # positions off the padding, as in `objectives.shifted_token_logps`.
    hidden, _ = model.hidden_states(ids, None)
    mask = flat(batch["completion_mask"])[:, 1:].astype(jnp.float32)
    tok = multi_head_token_logps(hidden[:, :-1], model.heads.weight[...], ids[:, 1:], mask,
                                 chunk_size=chunk_size)  # [H, 2B, S-1]
    sums = jnp.sum(tok, axis=-1).reshape(-1, b, two)
    return jnp.transpose(sums, (1, 2, 0))


_METRICS = ("loss/heads", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
            "rewards/margins", "logps/chosen", "logps/rejected", "examples")


def mah_dpo_objective(graphdef, *, objectives: Sequence[str], ref_graphdef=None,
                      beta: float = 0.1, label_smoothing: float = 0.0,
                      loss_type: str = "sigmoid", reference_free: bool = False,
                      chunk_size: int = 128) -> Objective:
    """MAH-DPO objective `(params, batch, rng, *, ref_params=None) -> (loss, metrics)`.

    Pair i (objective `batch["objective"][i]` = k) is scored by head k; with a single head
    every pair goes to head 0 (single-head DPO on the mixed data, exactly `dpo_objective`).

    Args:
      graphdef: the policy `MultiHeadLM`'s graph definition (H heads: H = O, or 1).
      objectives: O objective names (metric prefixes).
      ref_graphdef: the base `Transformer`'s graph definition; the reference's parameters come
        as `ref_params`, or its log-probs as `batch["ref_logps"]` `[B, 2]` (precomputed).
      beta, label_smoothing, loss_type, reference_free: `losses.mah_dpo_loss`.
      chunk_size: tokens per log-prob chunk.
    Returns:
      the objective. Batch: `input_ids`, `attention_mask`, `completion_mask` `[B, 2, S]` and
      `objective` `[B]` int. Metrics: `{objective}/{loss, rewards/..., logps/..., examples}`
      scalars plus batch totals `rewards/*`, `logps/*`, `num_tokens`.
    """
    names = tuple(objectives)
    ref_fn = reference_logps_fn(ref_graphdef, chunk_size=chunk_size) if ref_graphdef else None

    def reference(ref_params, batch):
        if reference_free:
            return jnp.zeros(batch["input_ids"].shape[:2], jnp.float32)
        if "ref_logps" in batch:
            return jax.lax.stop_gradient(batch["ref_logps"].astype(jnp.float32))
        if ref_params is None or ref_fn is None:
            raise ValueError("MAH-DPO needs the reference: ref_graphdef + ref_params, or "
                             "batch['ref_logps'] (precomputed)")
        return jax.lax.stop_gradient(ref_fn(jax.lax.stop_gradient(ref_params), batch))

    def objective(params, batch, rng, *, ref_params=None):
        del rng
        logps = pair_head_logps(graphdef, params, batch, chunk_size=chunk_size)  # [B, 2, H]
        num_heads = logps.shape[-1]
        if num_heads not in (1, len(names)):
            raise ValueError(f"{num_heads} heads for {len(names)} objectives: use one head "
                             "per objective, or one head for all")
        ref = reference(ref_params, batch)  # [B, 2]
        obj = batch["objective"].astype(jnp.int32)
        head = jnp.zeros_like(obj) if num_heads == 1 else obj  # -1 (no objective): no head
        kw = dict(beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
                  reference_free=reference_free)
        loss, _ = losses.mah_dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1], head,
                                      **kw)
        # Per-objective metrics: each objective's pairs under the head it is routed to.
        by_obj = lambda x: jnp.broadcast_to(x, x.shape[:-1] + (len(names),))
        _, per = losses.mah_dpo_loss(by_obj(logps[:, 0]), by_obj(logps[:, 1]), ref[:, 0],
                                     ref[:, 1], obj, **kw)
        metrics = {}
        for key in _METRICS:
            suffix = "loss" if key == "loss/heads" else key
            for k, name in enumerate(names):
                metrics[f"{name}/{suffix}"] = per[key][k]
        # Batch totals over routed pairs, TRL names.
        routed = jnp.take_along_axis(logps, jnp.clip(head, 0)[:, None, None], axis=-1)[..., 0]
        valid = (head >= 0).astype(jnp.float32)
        n = jnp.maximum(jnp.sum(valid), 1.0)
        mean = lambda x: jnp.sum(x * valid) / n
        r_w = jax.lax.stop_gradient(beta * (routed[:, 0] - ref[:, 0]))
        r_l = jax.lax.stop_gradient(beta * (routed[:, 1] - ref[:, 1]))
        metrics.update({
            "rewards/chosen": mean(r_w), "rewards/rejected": mean(r_l),
            "rewards/accuracies": mean((r_w > r_l).astype(jnp.float32)),
            "rewards/margins": mean(r_w - r_l),
            "logps/chosen": mean(jax.lax.stop_gradient(routed[:, 0])),
            "logps/rejected": mean(jax.lax.stop_gradient(routed[:, 1])),
            "num_tokens": jnp.sum(batch["attention_mask"]).astype(jnp.float32),
        })
        return loss, metrics

    return objective


# ------------------------------------------------------------------------------ data

class BalancedBatchIterator(BatchIterator):
    """Batches of B/O pairs of every objective, shuffled together (the reference code's
    `get_batch_iterator`): resumable like `BatchIterator` (same `state_dict`).

    An epoch is `min_k |rows of objective k| // (B/O)` batches; each epoch draws a fresh random
    subset of the larger objectives, so over several epochs every pair is seen. Rows whose
    objective is outside `[0, O)` are never drawn.

    Args:
      rows: tokenised pair rows with `objective`.
      num_objectives: O (must divide the global batch size).
      **kwargs: as `BatchIterator`.
    """

    def __init__(self, rows, *, num_objectives: int, **kwargs):
        super().__init__(rows, **kwargs)
        b = self.global_batch_size
        if b % num_objectives:
            raise ValueError(f"train.batch_size {b} must be a multiple of the {num_objectives} "
                             "objectives for balanced batches (or set data.balance=False)")
        objective = np.asarray([r["objective"] for r in self.rows])
        self._groups = [np.flatnonzero(objective == k) for k in range(num_objectives)]
        self._per = b // num_objectives
        sizes = [len(g) for g in self._groups]
        if min(sizes) < self._per:
            raise ValueError(f"pairs per objective {sizes}: every objective needs at least "
                             f"{self._per} pairs for one balanced batch of {b}")

    @property
    def steps_per_epoch(self) -> int:
        return min(len(g) for g in self._groups) // self._per

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        perms = [rng.permutation(g) if self.shuffle else g for g in self._groups]
        p = self._per
        blocks = [np.concatenate([g[j * p:(j + 1) * p] for g in perms])
                  for j in range(self.steps_per_epoch)]
        return np.concatenate([rng.permutation(x) if self.shuffle else x for x in blocks])


# ------------------------------------------------------------------------------ save / load

def save_multihead(model: MultiHeadLM, path: str | os.PathLike, *,
                   objectives: Sequence[str] | None = None, weights=None) -> None:
    """Writes `model.as_lm(weights)` as an HF directory and the H heads beside it.

    `path/heads/heads.safetensors` holds `weight` `[H, E, V]`; `path/heads/heads.json` the
    objective names and the export weights. `from_hf(path)` loads the mixture LM;
    `load_multihead(path)` the trunk and all heads.
    """
    from safetensors.numpy import save_file

    to_hf(model.as_lm(weights), path)
    os.makedirs(os.path.join(path, HEADS_DIR), exist_ok=True)
    save_file({"weight": np.asarray(jax.device_get(model.heads.weight[...]), np.float32)},
              os.path.join(path, HEADS_FILE))
    w = check_head_weights(np.ones(model.num_heads) if weights is None else weights,
                           model.num_heads, field="heads.export_weights")
    meta = {"num_heads": model.num_heads, "objectives": list(objectives or []),
            "export_weights": w.tolist()}
    with open(os.path.join(path, HEADS_META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)


def load_multihead(path: str | os.PathLike, **kwargs) -> tuple[MultiHeadLM, list[str]]:
    """Reads a directory written by `save_multihead` (kwargs go to `from_hf`).

    Returns:
      (the `MultiHeadLM`, its objective names).
    """
    from safetensors.numpy import load_file

    head_path = os.path.join(path, HEADS_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{head_path} not found: not an alignax multi-head directory")
    base = from_hf(path, **kwargs)
    weight = load_file(head_path)["weight"]
    model = MultiHeadLM.from_base(base, weight.shape[0], noise_std=0.0)
    model.heads.weight[...] = jnp.asarray(weight, model.heads.weight[...].dtype)
    with open(os.path.join(path, HEADS_META), encoding="utf-8") as f:
        names = json.load(f).get("objectives", [])
    return model, names


def run(cfg, workdir: str, *, log=print) -> dict:
    """The MAH-DPO trainer (`loop.RUNNERS["mah_dpo"]`); see `multihead_run.run`."""
    from alignax.train.multihead_run import run as _run  # it imports this module

    return _run(cfg, workdir, log=log)
