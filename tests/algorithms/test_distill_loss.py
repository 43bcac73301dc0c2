"""DCKD / ADPA objectives: a numpy oracle from full distributions, in-step vs cached teacher
outputs, the top-k -> full-vocabulary limit, gradients, and the teacher cache's fingerprint.

Tiny Llama-shaped models (vocab 320) with weights scaled up so that the next-token
distributions are peaked (random N(0, 0.02) weights give near-uniform ones, where every KL is
~0 and a wrong term would go unnoticed).
"""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy.special import xlogy

from alignax.algorithms.distill_loss import adpa_loss_fn, dckd_loss_fn, teacher_outputs_fn
from alignax.data.tokenize import collate
from alignax.models import init_model, tiny_config

V, WIDTH = 320, 5
CHUNK = 2  # smaller than WIDTH: the chunked scan (with its padding) is exercised


def _model(seed, hidden, layers=1, scale=6.0, dtype="float32"):
    m = init_model(tiny_config(hidden_size=hidden, intermediate_size=2 * hidden,
                               num_layers=layers, head_dim=8, dtype=dtype, param_dtype=dtype),
                   seed=seed)
    g, p = nnx.split(m)
    return g, jax.tree.map(lambda x: x * scale, p)


def _rows(n=3, seed=0):
    rng = np.random.default_rng(seed)
    tok = lambda k: [int(t) for t in rng.integers(0, 256, k)]
    return [{"prompt": tok(int(rng.integers(2, 5))), "chosen": tok(int(rng.integers(1, WIDTH + 1))),
             "rejected": tok(int(rng.integers(2, WIDTH + 1))), "objective": 0} for _ in range(n)]


def _batch(rows, width=16):
    b = collate(rows, pad_id=256, buckets=(width,), width=width)
    return {k: b[k] for k in ("input_ids", "attention_mask", "completion_mask")}


@pytest.fixture(scope="module")
def models():
    return {"student": _model(0, 16), "dpo": _model(1, 24), "ref": _model(2, 24)}


def _full_logps(gp, batch):
    """`[B, 2, S-1, V]` float64 log-softmax and the `[B, 2, S-1]` shifted mask (the oracle)."""
    g, p = gp
    b, two, s = batch["input_ids"].shape
    logits = nnx.merge(g, p)(batch["input_ids"].reshape(b * two, s))
    lp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    return lp.reshape(b, two, s, V)[:, :, :-1], batch["completion_mask"][:, :, 1:] > 0


def _oracle_dckd(models, batch, *, k, w_sft, w_d, w_c, w_r, stabilize):
    s_lp, mask = _full_logps(models["student"], batch)
    t_lp, _ = _full_logps(models["dpo"], batch)
    nll, kls = [], {0: [], 1: []}
    for i, j, t in zip(*np.nonzero(mask)):
        q, p = np.exp(s_lp[i, j, t]), np.exp(t_lp[i, j, t])
        ids = np.argsort(-p)[:k]
        # The stored teacher rest is max(1 - sum, 0); the student's is 1 - sum (then floored).
        pp = np.append(p[ids], max(1 - p[ids].sum(), 0.0))
        qq = np.append(q[ids], 1 - q[ids].sum())
        if stabilize:
            pp, qq = np.clip(pp, 1e-8, 1 - 1e-8), np.clip(qq, 1e-8, 1 - 1e-8)
        qq = np.maximum(qq, 1e-7)
        kls[j].append(np.sum(xlogy(pp, pp) - pp * np.log(qq)))  # 0 log 0 = 0
        if j == 0:
            nll.append(-s_lp[i, j, t, batch["input_ids"][i, j, t + 1]])
    return w_sft * np.mean(nll) + w_d * (w_c * np.mean(kls[0]) + w_r * np.mean(kls[1]))


def test_dckd_matches_numpy_oracle(models):
    # Loss = w_sft NLL(y_w) + w_d (w_c KL(y_w) + w_r KL(y_l)), every term a token mean, the KL
    # between (k+1)-bin collapsed, clamped distributions (docs/algorithms.md, DCKD): from numpy.
    rows = _rows()
    batch = _batch(rows)
    w = dict(sft_weight=0.7, distill_weight=2.0, chosen_weight=0.3, rejected_weight=0.5)
    for k, stabilize in ((4, True), (V, False)):
        obj = dckd_loss_fn(models["student"][0], models["dpo"][0], width=WIDTH,
                           top_k=k, prob_stabilize=stabilize, chunk_size=CHUNK,
                           **w)
        loss, mets = jax.jit(obj)(models["student"][1], batch, None,
                                  ref_params={"dpo": models["dpo"][1]})
        want = _oracle_dckd(models, batch, k=k, w_sft=0.7, w_d=2.0, w_c=0.3, w_r=0.5,
                            stabilize=stabilize)
        np.testing.assert_allclose(float(loss), want, rtol=2e-5)
        assert float(mets["loss/chosen-fkl"]) > 0.05  # peaked models: a KL well away from 0
        assert float(mets["num_tokens"]) == sum(len(r["chosen"]) + len(r["rejected"])
                                                for r in rows)


@pytest.mark.parametrize("clamp", [True, False])
def test_adpa_matches_numpy_oracle(models, clamp):
    # Loss = w_sft NLL(y_w) - w_adv mean_t sum_{v in top-k} pi_theta(v) A_t(v) on y_l, with
    # A = log pi_dpo - log pi_ref (both floored at 1e-7) at the DPO teacher's top-k ids;
    # clamped: both (k+1)-bin vectors clipped to [1e-8, 1 - 1e-8], the rest bucket's target 0.
    batch = _batch(_rows(seed=1))
    k = 6
    obj = adpa_loss_fn(models["student"][0], {n: models[n][0] for n in ("dpo", "ref")},
                       width=WIDTH, top_k=k, sft_weight=0.6, adpa_weight=1.6,
                       clamp_advantage=clamp, chunk_size=CHUNK)
    loss, mets = jax.jit(obj)(models["student"][1], batch, None,
                              ref_params={n: models[n][1] for n in ("dpo", "ref")})
    s_lp, mask = _full_logps(models["student"], batch)
    d_lp, _ = _full_logps(models["dpo"], batch)
    r_lp, _ = _full_logps(models["ref"], batch)
    nll, adv = [], []
    for i, j, t in zip(*np.nonzero(mask)):
        if j == 0:
            nll.append(-s_lp[i, 0, t, batch["input_ids"][i, 0, t + 1]])
            continue
        ids = np.argsort(-d_lp[i, 1, t])[:k]
        a = (np.maximum(d_lp[i, 1, t, ids], np.log(1e-7))
             - np.maximum(r_lp[i, 1, t, ids], np.log(1e-7)))
        q = np.exp(s_lp[i, 1, t, ids])
        if clamp:
            q = np.clip(np.append(q, 1 - q.sum()), 1e-8, 1 - 1e-8)
            a = np.clip(np.append(a, 0.0), 1e-8, 1 - 1e-8)
        adv.append(-np.sum(q * a))
    want = 0.6 * np.mean(nll) + 1.6 * np.mean(adv)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(mets["loss/adpa"]), np.mean(adv), rtol=2e-5, atol=1e-7)


def _cached_batch(algorithm, models, batch, *, k, width=16):
    """The batch plus the arrays the teacher cache would store for it (computed in a batch
    of a different padded width, as the cache does)."""
    names = ("dpo",) if algorithm == "dckd" else ("dpo", "ref")
    fn = jax.jit(teacher_outputs_fn(algorithm, {n: models[n][0] for n in names},
                                    width=WIDTH, top_k=k, chunk_size=CHUNK))
    wide = {key: np.pad(v, [(0, 0), (0, 0), (0, width)], constant_values=0 if key != "input_ids"
                        else 256) for key, v in batch.items()}
    arrays = fn({n: models[n][1] for n in names}, wide)
    return dict(batch, **{key: np.asarray(v) for key, v in arrays.items()})


@pytest.mark.parametrize("algorithm", ["dckd", "adpa"])
def test_cached_teacher_equals_in_step(models, algorithm):
    # The same teacher numbers from the cache arrays (made at another padded width) as from
    # the teachers inside the step: equal losses, for k = V and for k small.
    batch = _batch(_rows(seed=2))
    names = ("dpo",) if algorithm == "dckd" else ("dpo", "ref")
    refs = {n: models[n][1] for n in names}
    for k in (3, V):
        if algorithm == "dckd":
            obj = dckd_loss_fn(models["student"][0], models["dpo"][0], width=WIDTH,
                               top_k=k, chunk_size=CHUNK)
        else:
            obj = adpa_loss_fn(models["student"][0], {n: models[n][0] for n in names},
                               width=WIDTH, top_k=k, clamp_advantage=False,
                               chunk_size=CHUNK)
        f = jax.jit(lambda p, b, r=None, obj=obj: obj(p, b, None, ref_params=r)[0])
        in_step = f(models["student"][1], batch, refs)
        cached = f(models["student"][1], _cached_batch(algorithm, models, batch, k=k))
        np.testing.assert_allclose(float(cached), float(in_step), rtol=1e-6)


def test_topk_kl_tends_to_full_kl(models):
    # Collapsing bins can only lose information: KL_k <= KL_k' <= full KL for k < k', and at
    # k = V the top-k form is the full-vocabulary KL (prob_stabilize off). The loss is close to
    # the exact one already at small k on these peaked teachers.
    batch = _batch(_rows(seed=3))
    # A flatter student (every probability > 1e-7), so the official floor never binds and the
    # k = V form is exactly the full KL.
    student = _model(0, 16, scale=3.0)
    s_lp, mask = _full_logps(student, batch)
    assert np.exp(s_lp[mask]).min() > 1e-6
    fkl = {}
    for k in (1, 4, 32, V, 0):
        obj = dckd_loss_fn(student[0], models["dpo"][0], width=WIDTH, top_k=k,
                           sft_weight=0.0, chosen_weight=1.0, rejected_weight=1.0,
                           prob_stabilize=False, chunk_size=CHUNK)
        loss, mets = jax.jit(obj)(student[1], batch, None, ref_params={"dpo": models["dpo"][1]})
        fkl[k] = (float(loss), float(mets["loss/chosen-fkl"]), float(mets["loss/rejected-fkl"]))
    for a, b in ((1, 4), (4, 32), (32, V)):
        assert all(x <= y + 1e-6 for x, y in zip(fkl[a], fkl[b])), (a, b, fkl)
    np.testing.assert_allclose(fkl[V], fkl[0], rtol=1e-5)
    np.testing.assert_allclose(fkl[32][0], fkl[0][0], rtol=0.05)


@pytest.mark.parametrize("algorithm", ["dckd", "adpa"])
def test_gradients_match_finite_differences(x64, algorithm):
    # float64 models: the objective's gradient (through the frame gather, the chunked and
    # checkpointed scan, the top-k gather and the loss) against central differences, with
    # respect to the final norm and the LM head (the trunk's RoPE runs in float32, too coarse
    # for finite differences).
    student, dpo, ref = (_model(s, 8, dtype="float64") for s in (3, 4, 5))
    head, trunk = nnx.split_state(student[1], nnx.Any(nnx.PathContains("lm_head"),
                                                      nnx.PathContains("norm")), ...)
    batch = _batch(_rows(n=2, seed=4), width=12)
    if algorithm == "dckd":
        obj = dckd_loss_fn(student[0], dpo[0], width=WIDTH, top_k=5, chunk_size=CHUNK,
                           chosen_weight=1.0, rejected_weight=1.0)
        refs = {"dpo": dpo[1]}
    else:
        obj = adpa_loss_fn(student[0], {"dpo": dpo[0], "ref": ref[0]}, width=WIDTH,
                           top_k=5, clamp_advantage=False, chunk_size=CHUNK)
        refs = {"dpo": dpo[1], "ref": ref[1]}
    f = jax.jit(lambda h: obj(nnx.merge_state(h, trunk), batch, None, ref_params=refs)[0])
    check_grads(f, (head,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6, eps=1e-5)


def test_objective_errors(models):
    batch = _batch(_rows())
    obj = dckd_loss_fn(models["student"][0], models["dpo"][0], width=WIDTH, top_k=4)
    with pytest.raises(ValueError, match="teacher parameters in the train state"):
        obj(models["student"][1], batch, None)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        adpa_loss_fn(models["student"][0], {}, width=WIDTH, top_k=0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        teacher_outputs_fn("dckd", {}, width=WIDTH, top_k=0)
