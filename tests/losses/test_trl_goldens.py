"""Golden tests: alignax's preference losses against numbers computed by TRL 1.16.0 itself.

`tests/testdata/trl_preference_goldens.json` was written by
`tests/testdata/make_trl_preference_goldens.py`, which drives TRL's own loss code (DPO and KTO
`_compute_loss`, CPO `cpo_loss`, ORPO `odds_ratio_loss`, `RewardTrainer.compute_loss`) on random
inputs; see its docstring. This test reads the JSON only: no torch or TRL at test time.

Run `python -m tests.losses.test_trl_goldens` (repo root) for the max relative error per loss.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignax import losses
from alignax.losses import PREFERENCE_LOSSES

GOLDENS = pathlib.Path(__file__).resolve().parents[1] / "testdata" / "trl_preference_goldens.json"
DATA = json.loads(GOLDENS.read_text())
CASES = DATA["cases"]

# float64 cases: TRL and alignax do the same maths in double precision.
# float32 cases (TRL's alpha_divergence clamp table and ORPO force float32): both sides round at
# float32, in different operation orders (e.g. TRL's exp(t) - 1 against our expm1), so 1e-5.
RTOL = {"float64": 1e-6, "float32": 1e-5}
# (TRL's rewards/accuracies are float32 means even in float64 runs, e.g. 2/3 -> 3e-8 relative.)
# Absolute floor for values that are zero or cancel to near zero (exactly saturated losses,
# means of margins or log odds of either sign): far below the size of the terms summed.
ATOL = {"float64": 1e-12, "float32": 1e-7}

# Cases where alignax disagrees with TRL 1.16.0 on purpose or by a known bug: name -> reason.
# Each is a strict xfail, so fixing our code turns it into a failure to remove from here.
KNOWN_DISAGREEMENTS: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# Our side of each case: {quantity: value}, computed under jit.

def _arrays(case, keys=None):
    dtype = case["dtype"]
    out = {}
    for k, v in case["inputs"].items():
        if keys is not None and k not in keys:
            continue
        if k == "desirable":
            out[k] = np.asarray(v, dtype=bool)
        else:
            out[k] = np.asarray(v, dtype=dtype)
    return out


def _dpo(case):
    p = case["params"]
    types = p["loss_type"]
    weights = p["loss_weights"] or [1.0] * len(types)
    common = dict(beta=p["beta"], label_smoothing=p["label_smoothing"],
                  f_divergence_type=p["f_divergence_type"],
                  f_alpha_divergence_coef=p["f_alpha_divergence_coef"],
                  discopop_tau=p["discopop_tau"])
    ld_alpha = p["ld_alpha"]

    def fn(a):
        raw = (a["chosen_logps"], a["rejected_logps"], a["ref_chosen_logps"],
               a["ref_rejected_logps"])
        logps = raw
        if ld_alpha is not None:
            logps = (*losses.ld_sequence_logps(a["chosen_token_logps"], a["chosen_mask"],
                                               a["rejected_token_logps"], a["rejected_mask"],
                                               ld_alpha=ld_alpha),
                     *losses.ld_sequence_logps(a["ref_chosen_token_logps"], a["chosen_mask"],
                                               a["ref_rejected_token_logps"], a["rejected_mask"],
                                               ld_alpha=ld_alpha))
        kw = dict(common, chosen_lengths=a["chosen_lengths"],
                  rejected_lengths=a["rejected_lengths"])
        if ld_alpha is not None and "sft" in types:
            # TRL's sft term is the NLL of the raw tokens, not of the LD-weighted sums.
            per_pair = sum(w * PREFERENCE_LOSSES[t](*(raw if t == "sft" else logps), **kw)
                           for t, w in zip(types, weights))
        elif len(types) == 1:
            per_pair = weights[0] * PREFERENCE_LOSSES[types[0]](*logps, **kw)
        else:
            per_pair = losses.mixed_preference_loss(*logps, loss_types=types,
                                                    loss_weights=weights, **kw)
        if p["use_weighting"]:
            per_pair = per_pair * losses.wpo_weights(
                a["chosen_token_logps"], a["chosen_log_sum_sq_probs"], a["chosen_mask"],
                a["rejected_token_logps"], a["rejected_log_sum_sq_probs"], a["rejected_mask"])
        return {"loss": per_pair.mean(), **losses.preference_metrics(*logps, beta=p["beta"])}

    return fn


def _kto(case):
    p = case["params"]
    weights = dict(desirable_weight=p["desirable_weight"],
                   undesirable_weight=p["undesirable_weight"])

    def fn(a):
        if p["loss_type"] == "kto":
            kl = losses.kto_kl_estimate(a["kl_logps"], a["ref_kl_logps"])
            per = losses.kto_loss(a["policy_logps"], a["ref_logps"], a["desirable"], kl,
                                  beta=p["beta"], **weights)
        else:
            kl = jnp.zeros((), a["policy_logps"].dtype)  # TRL logs kl = 0 without a KL term
            per = losses.apo_zero_unpaired_loss(a["policy_logps"], a["ref_logps"],
                                                a["desirable"], beta=p["beta"], **weights)
        return {"loss": per.mean(), "kl": kl}

    return fn


def _rewards(chosen, rejected, beta, alpha):
    r_w, r_l = losses.cpo_rewards(chosen, rejected, beta=beta, alpha=alpha)
    return {"rewards/chosen": r_w.mean(), "rewards/rejected": r_l.mean(),
            "rewards/accuracies": (r_w > r_l).astype(r_w.dtype).mean(),
            "rewards/margins": (r_w - r_l).mean()}


def _cpo(case):
    p = case["params"]
    beta, alpha, kind = p["beta"], p["alpha"], p["loss_type"]

    def fn(a):
        w, l_ = a["chosen_logps"], a["rejected_logps"]
        lw, ll = a["chosen_lengths"], a["rejected_lengths"]
        if kind == "sigmoid":
            per = losses.cpo_loss(w, l_, beta=beta, label_smoothing=p["label_smoothing"],
                                  alpha=alpha)
        elif kind == "hinge":
            per = losses.cpo_hinge_loss(w, l_, beta=beta, alpha=alpha)
        elif kind == "ipo":
            per = losses.cpo_ipo_loss(w, l_, lw, ll, beta=beta, alpha=alpha)
        elif kind == "simpo":
            per = losses.simpo_loss(w, l_, lw, ll, beta=beta, gamma=p["simpo_gamma"],
                                    label_smoothing=p["label_smoothing"], alpha=alpha)
        else:
            raise ValueError(kind)
        # TRL's rewards use what it feeds the loss: summed, or averaged for ipo / simpo.
        sw, sl = (w / lw, l_ / ll) if p["average_log_prob"] else (w, l_)
        return {"loss": per.mean() + p["cpo_alpha"] * a["nll_loss"], "losses": per,
                **_rewards(sw, sl, beta, alpha)}

    return fn


def _orpo(case):
    beta = case["params"]["beta"]

    def fn(a):
        args = (a["chosen_logps"], a["rejected_logps"], a["chosen_lengths"],
                a["rejected_lengths"])
        per = losses.orpo_loss(*args, beta=beta)
        log_odds = losses.orpo_log_odds(*args)
        return {"loss": a["nll_loss"] + per.mean(),
                "losses": -per,  # TRL's `losses` are beta log sigma(log odds)
                "log_odds_ratio": jax.nn.log_sigmoid(log_odds).mean(),
                "log_odds_chosen": log_odds.mean(),
                **_rewards(args[0] / args[2], args[1] / args[3], beta, 0.0)}

    return fn


def _reward(case):
    c = case["params"]["center_rewards_coefficient"]

    def fn(a):
        per = losses.bradley_terry_loss(a["chosen_rewards"], a["rejected_rewards"],
                                        margin=a.get("margin"), center_rewards_coefficient=c)
        return {"loss": per.mean(),
                **losses.reward_metrics(a["chosen_rewards"], a["rejected_rewards"])}

    return fn


OURS = {"dpo": _dpo, "kto": _kto, "cpo": _cpo, "orpo": _orpo, "reward": _reward}


def ours(case) -> dict[str, np.ndarray]:
    out = jax.jit(OURS[case["trainer"]](case))(_arrays(case))
    return {k: np.asarray(v) for k, v in out.items()}


# TRL metrics with no alignax counterpart: KTO's per-label reward means, and the CPO/ORPO
# logps/* and nll_loss, which are plain means of the inputs.
UNCHECKED = {
    "kto": {"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
            "logps/rejected"},
    "cpo": {"logps/chosen", "logps/rejected", "nll_loss"},
    "orpo": {"logps/chosen", "logps/rejected", "nll_loss"},
}


def expected(case) -> dict[str, np.ndarray]:
    """TRL's numbers for the quantities `ours` returns: loss, per-pair losses, metrics."""
    out = case["outputs"]
    exp = {"loss": out["loss"]}
    if "losses" in out:
        exp["losses"] = out["losses"]
    exp.update(out["metrics"])
    skip = UNCHECKED.get(case["trainer"], set())
    return {k: np.asarray(v, dtype=np.float64) for k, v in exp.items() if k not in skip}


def compare(case, got):
    """{quantity: max relative error} and the list of quantities out of tolerance."""
    rtol, atol = RTOL[case["dtype"]], ATOL[case["dtype"]]
    errors, bad = {}, []
    for key, want in expected(case).items():
        if key not in got:
            bad.append(f"{key}: not computed on our side")
            continue
        have = got[key].astype(np.float64)
        assert have.shape == want.shape, (key, have.shape, want.shape)
        diff = np.abs(have - want)
        errors[key] = float(np.max(diff / np.maximum(np.abs(want), np.finfo(float).tiny)))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            bad.append(f"{key}: ours {have.tolist()} vs TRL {want.tolist()}")
    return errors, bad


def family(case) -> str:
    """The loss a case tests, for the summary."""
    p = case["params"]
    if case["trainer"] == "dpo":
        name = "+".join(p["loss_type"])
        tags = [t for t, on in (("ld", p["ld_alpha"] is not None), ("wpo", p["use_weighting"]),
                                (p["f_divergence_type"], p["f_divergence_type"] != "reverse_kl"))
                if on]
        return "dpo/" + name + "".join(f"[{t}]" for t in tags)
    if case["trainer"] in ("kto", "cpo"):
        alpha = "[alphapo]" if case["params"].get("alpha") else ""
        return f"{case['trainer']}/{p['loss_type']}{alpha}"
    return case["trainer"]


# ---------------------------------------------------------------------------------------------
# Tests.

def _params():
    for case in CASES:
        marks = ()
        if case["name"] in KNOWN_DISAGREEMENTS:
            marks = pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[case["name"]])
        yield pytest.param(case, id=f"{case['trainer']}-{case['name']}", marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_matches_trl(case, x64):
    # Same numbers as TRL's own loss code (see the module docstring), loss and metrics.
    got = ours(case)
    _, bad = compare(case, got)
    assert not bad, f"{case['name']} ({case['dtype']}, {case['params']}):\n" + "\n".join(bad)


def test_goldens_come_from_trl_1_16(x64):
    # The goldens pin the TRL version whose semantics alignax follows (docs/algorithms.md,
    # Golden values).
    assert DATA["trl_version"] == "1.16.0"
    assert len({c["name"] for c in CASES}) == len(CASES)


def test_every_registered_loss_has_goldens():
    # A loss registered without TRL goldens, or a TRL loss_type we do not register, fails here.
    covered = {t for c in CASES if c["trainer"] == "dpo" for t in c["params"]["loss_type"]}
    assert set(PREFERENCE_LOSSES) <= covered, sorted(set(PREFERENCE_LOSSES) - covered)
    assert set(DATA["trl_dpo_loss_types"]) <= set(PREFERENCE_LOSSES)
    singles = {c["params"]["loss_type"][0] for c in CASES
               if c["trainer"] == "dpo" and len(c["params"]["loss_type"]) == 1}
    assert set(PREFERENCE_LOSSES) <= singles  # each one also on its own, not only in a mix


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_wrong_value_is_caught(dtype, x64):
    # The comparison can fail: a golden loss off by 10x the tolerance is reported.
    case = copy.deepcopy(next(c for c in CASES if c["dtype"] == dtype
                              and c["name"] not in KNOWN_DISAGREEMENTS))
    got = ours(case)
    assert not compare(case, got)[1]
    case["outputs"]["loss"] *= 1.0 + 10 * RTOL[dtype]
    assert [b for b in compare(case, got)[1] if b.startswith("loss:")]


def summary() -> dict[str, list]:
    """{loss: [cases, max rel. error of the loss, of the other quantities, cases that raise]}."""
    table = defaultdict(lambda: [0, 0.0, 0.0, 0])
    with jax.enable_x64(True):
        for case in CASES:
            row = table[family(case)]
            row[0] += 1
            try:
                errors, _ = compare(case, ours(case))
            except ValueError:  # a known disagreement: our registry rejects the config
                row[3] += 1
                continue
            row[1] = max(row[1], errors["loss"])
            row[2] = max([row[2]] + [v for k, v in errors.items() if k != "loss"])
    return dict(sorted(table.items()))


if __name__ == "__main__":
    print(f"TRL {DATA['trl_version']}, torch {DATA['torch_version']}: {len(CASES)} cases")
    print(f"{'loss':40s} cases  loss rel err  metrics rel err  raising")
    for name, (n, loss_err, metric_err, raising) in summary().items():
        print(f"{name:40s} {n:5d}  {loss_err:12.2e}  {metric_err:15.2e}  {raising or '':>7}")
