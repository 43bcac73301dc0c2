"""MAH-DPO's policy (MAHALO, arXiv 2510.01167): a shared trunk with one LM head per objective.

`MultiHeadLM` = a `Transformer` trunk (its final hidden states) + a `MultiLMHead` of H untied
heads `[H, E, V]`, each the base (SFT) LM head plus N(0, noise_std^2) noise. The trunk's own
LM head is dropped (the heads replace it), so no unused `[E, V]` parameter and no optimizer
moments for it exist. With tied embeddings the heads are untied copies of the embedding and the
input embedding stays as it is (the reference code instead perturbs the tied matrix in place,
input embeddings included; alignax does not).

Saved (`save_multihead`) as a plain HF directory whose LM head is the mixture `sum_k w_k W_k`
(so `from_hf` loads it as an ordinary model), with the H heads beside it in
`heads/heads.safetensors` and their objective names and export weights in `heads/heads.json`
(`load_multihead`).
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

from alignax.models.heads import MultiLMHead, check_head_weights, mix_heads
from alignax.models.hf import from_hf, to_hf
from alignax.models.layers import param
from alignax.models.transformer import Transformer

HEADS_DIR = "heads"  # beside, not among, the trunk's safetensors (from_hf reads *.safetensors)
HEADS_FILE = os.path.join(HEADS_DIR, "heads.safetensors")
HEADS_META = os.path.join(HEADS_DIR, "heads.json")


class MultiHeadLM(nnx.Module):
    """A trunk and H LM heads: `model(input_ids, attention_mask) -> [H, B, S, V]` logits.

    Build it from a base LM with `MultiHeadLM.from_base`; train it with
    `alignax.algorithms.mah_dpo`; sample with `alignax.sampling.generate(..., head_weights=w)`.
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

    def as_lm(self, weights=None) -> Transformer:
        """A plain `Transformer` (untied) whose LM head is `sum_k w_k W_k` (host side).

        Args:
          weights: `[H]` mixing weights (normalised); None = uniform; one-hot = one head.
        """
        w = np.ones(self.num_heads, np.float32) if weights is None else weights
        w = check_head_weights(w, self.num_heads, field="heads.export_weights")
        lm = nnx.merge(*nnx.split(self.trunk))
        head = mix_heads(self.heads.weight[...], jnp.asarray(w))
        lm.config = _untied(lm.config)
        lm.lm_head = param(head.astype(lm.config.weight_dtype), ("embed", "vocab"))
        return lm


def _untied(config):
    return dataclasses.replace(config, tie_word_embeddings=False)


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
