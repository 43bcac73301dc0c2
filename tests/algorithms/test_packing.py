"""Packed batches give the unpacked batch's loss, metrics and gradients (float32, 1e-5) for SFT,
the DPO family (frozen and precomputed reference, LD-DPO, WPO, batch-coupled types) and the
reference-free losses; micro-batches match; packed runs train and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alignax import config, data, metrics
from alignax.algorithms.dpo import dpo_loss_fn
from alignax.algorithms.sft import sft_loss_fn
from alignax.algorithms.simpo import VARIANTS, reference_free_loss_fn
from alignax.models import init_model, tiny_config
from alignax.train.step import _split_microbatches
from tests.runs import load, train

TOL = 1e-5
KW = dict(global_batch_size=8, pad_id=256, max_length=18, seed=3)


def _rows(kind: str, n: int = 32, seed: int = 0) -> list[dict]:
    """Rows of varied lengths (chosen and rejected lengths differ, so LD-DPO's weights are not
    all 1; some SFT prompts empty)."""
    rng = np.random.default_rng(seed)
    tok = lambda lo, hi: rng.integers(3, 250, int(rng.integers(lo, hi))).tolist()
    if kind == "sft":
        return [{"prompt": tok(0, 8), "completion": tok(1, 10)} for _ in range(n)]
    rows = [{"prompt": tok(1, 8), "chosen": tok(1, 10), "rejected": tok(1, 10),
             "objective": -1} for _ in range(n)]
    assert sum(len(r["chosen"]) != len(r["rejected"]) for r in rows) > n // 2
    return rows


@pytest.fixture(scope="module")
def setup():
    graphdef, params = nnx.split(init_model(tiny_config("llama"), seed=1))
    _, ref_params = nnx.split(init_model(tiny_config("llama"), seed=2))
    pairs, sft = _rows("pairs"), _rows("sft", seed=1)
    ref = {"ref_logps": np.random.default_rng(0).normal(-20, 3, (len(pairs), 2)).astype(
        np.float32)}

    def both(rows, **kw):
        u = next(data.BatchIterator(rows, **KW, **kw))
        p = next(data.PackedBatchIterator(rows, pack_width=48, **KW, **kw))
        assert p["input_ids"].shape[0] < 8  # several examples per row
        return u, p

    return dict(graphdef=graphdef, params=params, ref_params=ref_params, pairs=both(pairs),
                sft=both(sft), precomputed=both(pairs, arrays=ref), pair_rows=pairs)


def _run(fn, params, batch, **kw):
    f = jax.jit(jax.value_and_grad(lambda p, b: fn(p, b, None, **kw), has_aux=True))
    (loss, mets), grads = f(params, batch)
    return float(loss), {k: float(v) for k, v in mets.items()}, jax.tree.leaves(grads)


def _max_diffs(fn, params, unpacked, packed, **kw):
    lu, mu, gu = _run(fn, params, unpacked, **kw)
    lp, mp, gp = _run(fn, params, packed, **kw)
    assert mu.keys() == mp.keys()
    return lu, {"loss": abs(lu - lp), "metrics": max(abs(mu[k] - mp[k]) for k in mu),
                "grads": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(gu, gp))}


# name: (loss_fn maker, batches, pass the frozen reference). The DPO reference is a frozen
# copy (ref_params) or precomputed `ref_logps` in the batch ("precomputed"). Plain sigmoid and
# sigmoid + sft are inside "dpo_sigmoid_sft_ld" and the micro-batch test; SimPO shares ORPO's
# length-averaged path (the engine's SimPO run is in tests/algorithms/test_offline_runs.py).
CASES = {
    "sft": (lambda g: sft_loss_fn(g), "sft", False),
    "dpo_ipo_precomputed": (lambda g: dpo_loss_fn(g, loss_types="ipo"), "precomputed", False),
    "dpo_sigmoid_sft_ld": (lambda g: dpo_loss_fn(g, loss_types="sigmoid,sft", ld_alpha=0.3),
                           "pairs", True),
    "dpo_aot_wpo": (lambda g: dpo_loss_fn(g, loss_types="aot", use_weighting=True), "pairs",
                    True),
    "orpo": (lambda g: reference_free_loss_fn(
        g, algorithm="orpo", name="orpo", **VARIANTS["orpo"]["orpo"]), "pairs", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_unpacked(case, setup):
    make, batches, with_ref = CASES[case]
    unpacked, packed = setup[batches]
    kw = {"ref_params": setup["ref_params"]} if with_ref else {}
    loss, diffs = _max_diffs(make(setup["graphdef"]), setup["params"], unpacked, packed, **kw)
    assert np.isfinite(loss)
    assert max(diffs.values()) <= TOL, diffs


def test_microbatches_hold_the_unpacked_microbatches(setup):
    # Grouped packing: the engine's strided split of a packed batch gives the unpacked
    # micro-batches' examples, so gradient accumulation matches as well.
    rows = setup["pair_rows"]
    unpacked = next(data.BatchIterator(rows, **KW))
    packed = next(data.PackedBatchIterator(rows, pack_width=48, num_microbatches=2, **KW))
    split = lambda b: jax.tree.map(lambda x: _split_microbatches(jnp.asarray(x), 2), b)
    su, sp = split(unpacked), split(packed)
    fn = dpo_loss_fn(setup["graphdef"], loss_types="sigmoid,sft")
    for m in range(2):
        _, diffs = _max_diffs(fn, setup["params"], jax.tree.map(lambda x, m=m: x[m], su),
                              jax.tree.map(lambda x, m=m: x[m], sp),
                              ref_params=setup["ref_params"])
        assert max(diffs.values()) <= TOL, (m, diffs)


def test_packing_is_claimed_only_by_the_packed_algorithms():
    from alignax.algorithms import resolve_config

    resolve_config(load("simpo", "--config.data.packing=True"))
    with pytest.raises(config.ConfigError, match="data.packing"):
        resolve_config(load("kto", "--config.data.packing=True"))


PACKED = ("--config.data.packing=True", "--config.data.pack_width=64",
          "--config.train.batch_size=16", "--config.train.eval_every=4")


@pytest.mark.slow
def test_packed_dpo_run_trains_resumes_and_equals_unpacked(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train(load("dpo", *PACKED), straight)
    train(load("dpo", *PACKED, "--config.train.steps=2"), resumed)
    train(load("dpo", *PACKED, "--config.resume.allow_changes=True"), resumed)  # more steps
    a, b = metrics.read_metrics(str(straight)), metrics.read_metrics(str(resumed))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and 0 < r["packing/fill"] <= 1 for r in a)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    assert "eval/loss" in a[-1]
    # The same pairs unpacked: the same run.
    unpacked = train(load("dpo", *PACKED[2:]), tmp_path / "u")
    u = metrics.read_metrics(str(tmp_path / "u"))
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in u], atol=TOL)
    assert unpacked["eval_after"]["loss"] == pytest.approx(a[-1]["eval/loss"], abs=TOL)


def test_packed_sft_run_trains(tmp_path):
    train(load("sft", *PACKED, "--config.train.steps=2", "--config.train.eval_every=2"),
          tmp_path)
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and 0 < r["packing/fill"] <= 1 for r in rows)
    assert "eval/loss" in rows[-1]
