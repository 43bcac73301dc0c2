"""Regression guards on the compiled training steps, without a GPU: the matmul FLOPs and the
static temporary memory of the DPO and SFT steps of a small Llama are what the model says.

FLOPs come from the traced step (`alignax.costs.matmul_flops`: loops times their trip
counts; XLA's `cost_analysis` counts the layer scan's body once). The budget is the model's
own arithmetic, exact: `6 x N x T` for the policy's forward + backward, `2 x N x T` for the
frozen reference's forward, one more LM-head forward (`2 x E x V x T`: the chunked head
recomputes each chunk's logits in the backward instead of keeping them), attention's score and
value products (`4 x S x E` per token and layer and forward; 3 per step for the policy, 1 for
the reference), and for remat exactly its recompute: save_dots one attention forward (batched
dots are not saved), full the layers' forward less the MLP's down projection (its output is
not needed for the backward). A change that differentiates the reference, recomputes more than
the remat policy says, or adds a matmul fails here; so does one that makes remat save nothing
(temporaries) or materialises the `[rows, S, V]` logits the chunked head avoids.
"""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from alignax import sharding
from alignax.algorithms.dpo import dpo_loss_fn
from alignax.algorithms.sft import sft_loss_fn
from alignax.costs import matmul_flops
from alignax.models import ModelConfig, Transformer
from alignax.train import init_train_state, make_optimizer, make_train_step

E, L, F, V, HEADS, KV = 256, 2, 1024, 8192, 4, 2
PAIRS, S = 2, 256


def _config(remat="none") -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=V, hidden_size=E, intermediate_size=F,
                       num_layers=L, num_heads=HEADS, num_kv_heads=KV, head_dim=E // HEADS,
                       max_position_embeddings=S, dtype="float32", param_dtype="float32",
                       remat=remat)


def _matmul_params() -> int:
    d = E // HEADS
    per_layer = E * HEADS * d + 2 * E * KV * d + HEADS * d * E + 3 * E * F
    return L * per_layer + E * V  # the LM head counts, the embedding lookup does not


def _attention_flops(tokens: int) -> int:
    """Scores and values of one forward: 2 x (2 x S x E) per token and layer (XLA computes
    the full S x S block; the causal mask does not halve it)."""
    return 4 * S * E * L * tokens


def _compiled(loss, batch, *, remat="none", reference=None):
    config = _config(remat)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    tx = make_optimizer(learning_rate=1e-5, decay="constant", max_grad_norm=1.0)
    state, shardings = init_train_state(
        lambda: nnx.split(Transformer(config, rngs=nnx.Rngs(0)))[1], tx, mesh=mesh,
        reference=reference)
    step = make_train_step(loss(graphdef), tx, mesh=mesh, state_shardings=shardings)
    with jax.set_mesh(mesh):
        flops = matmul_flops(step.jitted, state, batch)
        compiled = step.jitted.lower(state, batch).compile()
    return flops, compiled.memory_analysis().temp_size_in_bytes


def _pairs():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (PAIRS, 2, S), dtype=np.int32)
    mask = np.zeros((PAIRS, 2, S), np.int32)
    mask[..., S // 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "completion_mask": mask}


def _rows():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (2 * PAIRS, S), dtype=np.int32)
    mask = np.zeros((2 * PAIRS, S), np.int32)
    mask[:, S // 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "completion_mask": mask}


TOKENS = 2 * PAIRS * S
LOGITS_BYTES = TOKENS * V * 4  # the [rows, S, V] float32 logits
HEAD = E * V
LAYERS = _matmul_params() - HEAD
DOWN = L * E * F  # the MLP down projections
RTOL = 1e-3


def _dpo(remat="none", chunk=64):
    loss = lambda g: dpo_loss_fn(g, loss_types="sigmoid", beta=0.1, chunk_size=chunk)
    return _compiled(loss, _pairs(), remat=remat, reference="copy")


@pytest.fixture(scope="module")
def dpo_costs():
    return {remat: _dpo(remat) for remat in ("none", "save_dots", "full")}


def test_dpo_step_flops_are_the_models(dpo_costs):
    flops, _ = dpo_costs["none"]
    attention = _attention_flops(TOKENS)
    model = 8 * LAYERS * TOKENS + (8 + 2) * HEAD * TOKENS + 4 * attention
    assert flops == pytest.approx(model, rel=RTOL), flops / model


def test_remat_recomputes_what_its_policy_says(dpo_costs):
    none, dots, full = (dpo_costs[r][0] for r in ("none", "save_dots", "full"))
    attention = _attention_flops(TOKENS)
    assert dots - none == pytest.approx(attention, rel=RTOL)
    assert full - none == pytest.approx(2 * (LAYERS - DOWN) * TOKENS + attention, rel=RTOL)


def test_remat_and_the_chunked_head_save_memory(dpo_costs):
    temp = {remat: t for remat, (_, t) in dpo_costs.items()}
    assert temp["save_dots"] < 0.75 * temp["none"], temp
    assert temp["full"] < 0.75 * temp["none"], temp
    # One chunk of S rows per scan step is the whole logits; 64-row chunks keep a quarter.
    _, whole = _dpo("save_dots", chunk=S)
    assert temp["save_dots"] < whole - 0.5 * LOGITS_BYTES / 2, (temp, whole)


def test_sft_step_flops():
    loss = lambda g: sft_loss_fn(g, chunk_size=64)
    flops, _ = _compiled(loss, _rows())
    model = 6 * LAYERS * TOKENS + (6 + 2) * HEAD * TOKENS + 3 * _attention_flops(TOKENS)
    assert flops == pytest.approx(model, rel=RTOL), flops / model
    assert math.isfinite(flops)
