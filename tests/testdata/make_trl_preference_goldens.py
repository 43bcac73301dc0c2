r"""Golden values for alignax's preference losses, computed by TRL 1.16.0 itself.

Run from the repository root, in an environment with torch (CPU) and trl==1.16.0:

    /tmp/v/bin/python tests/testdata/make_trl_preference_goldens.py

It writes `tests/testdata/trl_preference_goldens.json`, read by `tests/losses/test_trl_goldens.py`
(the test needs neither torch nor TRL). The output is deterministic (fixed seed).

How TRL is driven (docs/algorithms.md, Golden values):

* DPO: TRL >= 0.29 inlines the loss in `DPOTrainer._compute_loss`. The trainer is made with
  `DPOTrainer.__new__` and given the attributes `_compute_loss` reads, set from a real
  `DPOConfig` exactly as `DPOTrainer.__init__` sets them (the same validity checks are applied).
  The model is a stand-in whose call returns what the fused LM head returns: random per-token
  log-probs (and `log_sum_sq_probs`, `entropy`, `mean_logits`, `is_top1`), zeroed where the label
  is -100. So TRL does its own summing, LD-DPO weighting (`ld_alpha`), WPO weighting
  (`use_weighting`), length normalisation (ipo, sigmoid_norm) and the sft token mean. Reference
  log-probs come either from a reference stand-in (`precompute_ref_log_probs=False`) or are
  precomputed with TRL's own `DPOTrainer.compute_ref_log_probs` and passed in the batch.
* KTO: the same technique on `KTOTrainer._compute_loss`, with the mismatched KL completions
  (row i's prompt with row i-1's completion, cyclically, as TRL's dataset map builds them).
* CPO / SimPO / AlphaPO and ORPO: `CPOTrainer.get_batch_loss_metrics` / `ORPOTrainer.
  get_batch_loss_metrics` (which call the real `cpo_loss` / `odds_ratio_loss`) with
  `concatenated_forward` replaced by given sequence log-probs and NLL. TRL feeds summed log-probs
  to CPO sigmoid/hinge and per-token averaged ones to ipo/simpo and ORPO; the JSON stores the sums
  and the lengths. ORPO casts to float32 inside, so its cases are float32.
* Reward model: `RewardTrainer.compute_loss` with a stand-in model returning the rewards as logits.

Everything runs in float64 except where TRL forces float32: `alpha_divergence` (its clamp table
has no float64 key) and ORPO. Each case records its dtype. Inputs are stored exactly (JSON floats
round-trip float64; float32 values are stored as their exact float64 value).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import math
import os
import re
import sys
import warnings
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import torch
import trl

SEED = 20260516
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_preference_goldens.json")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _patch_optional_dependency_checks():
    """Gotcha (docs/algorithms.md, Golden values): some `is_*_available` helpers return a truthy
    tuple; unwrap it."""
    import_utils = importlib.import_module("trl.import_utils")
    for name in dir(import_utils):
        fn = getattr(import_utils, name)
        if name.startswith("is_") and name.endswith("_available") and callable(fn):
            def unwrapped(*a, _fn=fn, **k):
                r = _fn(*a, **k)
                return r[0] if isinstance(r, tuple) else r
            setattr(import_utils, name, unwrapped)


_patch_optional_dependency_checks()

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer  # noqa: E402
from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

CONFIG_KW = dict(output_dir="/tmp/trl_goldens_unused", report_to="none", bf16=False, use_cpu=True)


# ---------------------------------------------------------------------------------------------
# Stand-ins.

class IdentityAccelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def autocast(self):
        return contextlib.nullcontext()

    def unwrap_model(self, model):
        return model


class StandInLM(torch.nn.Module):
    """Answers `model(input_ids=..., labels=..., fused_lm_head=True)` like TRL's fused LM head.

    Holds, per known `input_ids` batch, raw per-token fields `[N, S-1]` (values for the next
    token at every position); like the real head it zeroes every field where the shifted label
    is -100 (prompt and padding).
    """

    is_gradient_checkpointing = False

    def __init__(self):
        super().__init__()
        self.table = []  # (input_ids, {field: tensor [N, S-1]})

    def add(self, input_ids, **fields):
        self.table.append((input_ids, fields))

    def forward(self, input_ids=None, labels=None, fused_lm_head=False, **kwargs):
        assert fused_lm_head, "DPO/KTO always call the fused head"
        fields = next((f for ids, f in self.table
                       if ids.shape == input_ids.shape and torch.equal(ids, input_ids)), None)
        if fields is None:
            raise KeyError("stand-in model called on an unknown batch")
        mask = labels[:, 1:] != -100
        out = {k: v.masked_fill(~mask, 0) for k, v in fields.items()}
        return SimpleNamespace(log_probs=out["log_probs"], entropy=out.get("entropy"),
                               mean_logits=out.get("mean_logits"), is_top1=out.get("is_top1"),
                               log_sum_sq_probs=out.get("log_sum_sq_probs"), aux_loss=None)


class StandInRewardModel(torch.nn.Module):
    def __init__(self, rewards):
        super().__init__()
        self.rewards = rewards  # [2B]: chosen then rejected

    def forward(self, **kwargs):
        return SimpleNamespace(logits=self.rewards[:, None])


def _fields(rng, n, s, tok_scale, dtype, with_sq=False):
    """Random fused-head outputs `[n, s]`: log-probs < 0 with mean about -tok_scale."""
    f = {
        "log_probs": torch.from_numpy(-rng.gamma(1.5, tok_scale / 1.5, (n, s))).to(dtype),
        "entropy": torch.from_numpy(rng.uniform(0.0, 5.0, (n, s))).to(dtype),
        "mean_logits": torch.from_numpy(rng.normal(0.0, 2.0, (n, s))).to(dtype),
        "is_top1": torch.from_numpy(rng.uniform(size=(n, s)) < 0.4),
    }
    if with_sq:
        f["log_sum_sq_probs"] = torch.from_numpy(-rng.uniform(0.05, 3.0, (n, s))).to(dtype)
    return f


def _ref_fields(rng, policy, rho_tok, dtype, ref_tok_scale=None):
    """Reference per-token log-probs near the policy's: -|lp + N(0, rho_tok)|.

    With `ref_tok_scale`, independent ones of that mean magnitude instead (a confident
    reference: log-ratios of a hundred nats or more).
    """
    lp = policy["log_probs"].double().numpy()
    if ref_tok_scale is not None:
        ref = -rng.gamma(1.5, ref_tok_scale / 1.5, lp.shape)
    else:
        ref = -np.abs(lp + rng.normal(0.0, rho_tok, lp.shape))
    return {"log_probs": torch.from_numpy(ref).to(dtype)}


def _sequences(rng, prompt_lens, completion_lens):
    """Right-padded `input_ids`, `attention_mask`, `completion_mask` `[N, S]`."""
    n = len(prompt_lens)
    s = max(p + c for p, c in zip(prompt_lens, completion_lens)) + int(rng.integers(0, 3))
    ids = torch.zeros((n, s), dtype=torch.long)
    att = torch.zeros((n, s), dtype=torch.long)
    comp = torch.zeros((n, s), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        ids[i, : p + c] = torch.from_numpy(rng.integers(3, 1000, p + c))
        att[i, : p + c] = 1
        comp[i, p : p + c] = 1
    return ids, att, comp


SCALES = {  # completion-length range, mean per-token -log p
    "tiny": ((1, 3), 0.3),
    "small": ((2, 8), 0.5),
    "medium": ((5, 30), 1.0),
    "large": ((40, 100), 3.0),
}


def _lengths(rng, n, scale):
    lo, hi = SCALES[scale][0]
    return [int(x) for x in rng.integers(lo, hi + 1, n)]


def _f(t):
    """Tensor -> nested list of Python floats (exact)."""
    return t.detach().double().tolist()


def _i(t):
    return t.detach().long().tolist()


# ---------------------------------------------------------------------------------------------
# DPO.

def _dpo_trainer(cfg, model, ref_model):
    """`DPOTrainer.__new__` plus the attributes `_compute_loss` reads, as `__init__` sets them."""
    args = DPOConfig(**CONFIG_KW, beta=cfg["beta"], loss_type=list(cfg["loss_type"]),
                     loss_weights=cfg["loss_weights"], label_smoothing=cfg["label_smoothing"],
                     f_divergence_type=cfg["f_divergence_type"],
                     f_alpha_divergence_coef=cfg["f_alpha_divergence_coef"],
                     discopop_tau=cfg["discopop_tau"], ld_alpha=cfg["ld_alpha"],
                     use_weighting=cfg["use_weighting"],
                     precompute_ref_log_probs=cfg["precompute_ref"])
    t = DPOTrainer.__new__(DPOTrainer)
    t.args = args
    t.model = model
    t.ref_model = None if args.precompute_ref_log_probs else ref_model
    t.accelerator = IdentityAccelerator()
    t.aux_loss_enabled = False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens = 0
    t._tp_size = 1
    # Verbatim from DPOTrainer.__init__ (trl 1.16.0), including its checks.
    t.beta = args.beta
    t.precompute_ref_logps = args.precompute_ref_log_probs
    t.loss_types = args.loss_type
    t.loss_weights = args.loss_weights or [1.0] * len(t.loss_types)
    t.ld_alpha = args.ld_alpha
    t.f_divergence_type = args.f_divergence_type
    t.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    f_divergence_loss_types = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust",
                               "discopop", "sft"}
    if t.f_divergence_type != "reverse_kl":
        assert set(t.loss_types) <= f_divergence_loss_types, cfg["name"]
    t.label_smoothing = args.label_smoothing
    t.use_weighting = args.use_weighting
    assert not (t.use_weighting and {"aot", "aot_unpaired"} & set(t.loss_types)), cfg["name"]
    assert not ("exo_pair" in t.loss_types and t.label_smoothing == 0.0), cfg["name"]
    return t


def dpo_case(rng, name, loss_type, *, batch=4, scale="medium", rho_tok=0.2, beta=0.1,
             loss_weights=None, label_smoothing=0.0, f_divergence_type="reverse_kl",
             f_alpha_divergence_coef=0.5, discopop_tau=0.05, ld_alpha=None,
             use_weighting=False, precompute_ref=True, dtype="float64", store_tokens=None,
             ref_tok_scale=None):
    loss_type = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    cfg = dict(name=name, loss_type=loss_type, loss_weights=loss_weights, beta=beta,
               label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
               f_alpha_divergence_coef=f_alpha_divergence_coef, discopop_tau=discopop_tau,
               ld_alpha=ld_alpha, use_weighting=use_weighting, precompute_ref=precompute_ref)
    tdtype = DTYPES[dtype]
    b = batch
    prompts = [int(x) for x in rng.integers(1, 7, b)]
    chosen_lens, rejected_lens = _lengths(rng, b, scale), _lengths(rng, b, scale)
    ids, att, comp = _sequences(rng, prompts + prompts, chosen_lens + rejected_lens)
    s = ids.shape[1] - 1
    fields = _fields(rng, 2 * b, s, SCALES[scale][1], tdtype, with_sq=use_weighting)
    ref = _ref_fields(rng, fields, rho_tok, tdtype, ref_tok_scale)
    model, ref_model = StandInLM(), StandInLM()
    model.add(ids, **fields)
    ref_model.add(ids, **ref)
    trainer = _dpo_trainer(cfg, model, ref_model)
    inputs = {"input_ids": ids, "attention_mask": att, "completion_mask": comp}
    if precompute_ref:
        # TRL's own precomputation (applies ld_alpha to the reference as training does).
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(ref_model, inputs)
        inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref_chosen, ref_rejected
    model.train()
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if k.startswith(("rewards/", "logps/"))}

    # The per-sequence sums exactly as TRL forms them (same tensor op, same bits).
    mask = comp[:, 1:] == 1
    pol = fields["log_probs"].masked_fill(~mask, 0)
    refp = ref["log_probs"].masked_fill(~mask, 0)
    sums, ref_sums = pol.sum(dim=1), refp.sum(dim=1)
    lengths = comp.sum(dim=1)
    case = {
        "name": name, "trainer": "dpo", "method": "trl.DPOTrainer._compute_loss", "dtype": dtype,
        "params": {k: v for k, v in cfg.items() if k != "name"},
        "inputs": {
            "chosen_logps": _f(sums[:b]), "rejected_logps": _f(sums[b:]),
            "ref_chosen_logps": _f(ref_sums[:b]), "ref_rejected_logps": _f(ref_sums[b:]),
            "chosen_lengths": _i(lengths[:b]), "rejected_lengths": _i(lengths[b:]),
        },
        "outputs": {"loss": float(loss), "metrics": metrics},
    }
    if store_tokens is None:
        store_tokens = ld_alpha is not None or use_weighting
    if store_tokens:
        # Completion-token window only (columns where any row has a completion token).
        cols = torch.nonzero(mask.any(dim=0)).view(-1)
        lo, hi = int(cols.min()), int(cols.max()) + 1
        tok = {"chosen_token_logps": pol[:b, lo:hi], "rejected_token_logps": pol[b:, lo:hi],
               "ref_chosen_token_logps": refp[:b, lo:hi],
               "ref_rejected_token_logps": refp[b:, lo:hi]}
        case["inputs"].update({k: _f(v) for k, v in tok.items()})
        case["inputs"]["chosen_mask"] = _i(mask[:b, lo:hi])
        case["inputs"]["rejected_mask"] = _i(mask[b:, lo:hi])
        if use_weighting:
            sq = fields["log_sum_sq_probs"].masked_fill(~mask, 0)
            case["inputs"]["chosen_log_sum_sq_probs"] = _f(sq[:b, lo:hi])
            case["inputs"]["rejected_log_sum_sq_probs"] = _f(sq[b:, lo:hi])
    if ld_alpha is None:
        # With ld_alpha the metric means are of LD-weighted sums; otherwise they must match.
        assert math.isclose(metrics["logps/chosen"], float(sums[:b].mean()), rel_tol=1e-12)
    return case


def trl_dpo_loss_types():
    """Every `loss_type` branch in TRL's `DPOTrainer._compute_loss`, read from its source."""
    return sorted(set(re.findall(r'loss_type == "(\w+)"', inspect.getsource(
        DPOTrainer._compute_loss))))


def dpo_cases(rng):
    cases = []

    def add(name, loss_type, **kw):
        cases.append(dpo_case(rng, name, loss_type, **kw))

    # Each loss type at several scales, betas and batch sizes (label smoothing where it applies).
    plain = {
        "sigmoid": [{}],
        "hinge": [{}],
        "ipo": [{}],
        "exo_pair": [{"label_smoothing": 1e-3}, {"label_smoothing": 0.1},
                     {"label_smoothing": 0.25}],
        "nca_pair": [{}],
        "robust": [{"label_smoothing": 0.0}, {"label_smoothing": 0.1},
                   {"label_smoothing": 0.3}],
        "bco_pair": [{}],
        "sppo_hard": [{}],
        "aot": [{"label_smoothing": 0.0}, {"label_smoothing": 0.1}, {"label_smoothing": 0.3}],
        "aot_unpaired": [{"label_smoothing": 0.0}, {"label_smoothing": 0.2},
                         {"label_smoothing": 0.05}],
        "apo_zero": [{}],
        "apo_down": [{}],
        "discopop": [{}, {"discopop_tau": 0.2}, {}],
        "sft": [{}],
        "sigmoid_norm": [{}],
    }
    settings = [  # (tag, batch, scale, rho_tok, beta)
        ("b4_small_beta0.1", 4, "small", 0.2, 0.1),
        ("b8_medium_beta0.5", 8, "medium", 0.3, 0.5),
        ("b3_large_beta0.05", 3, "large", 0.5, 0.05),
        ("b16_medium_beta2", 16, "medium", 0.02, 2.0),
        ("b1_tiny_beta0.1", 1, "tiny", 1.0, 0.1),
    ]
    for i, (loss_type, variants) in enumerate(plain.items()):
        for j in range(3):
            tag, batch, scale, rho_tok, beta = settings[(i + j) % len(settings)]
            kw = variants[j % len(variants)]
            extra = "".join(f"_{k.replace('_', '')}{v}" for k, v in kw.items())
            add(f"{loss_type}_{tag}{extra}", loss_type, batch=batch, scale=scale,
                rho_tok=rho_tok, beta=beta, **kw)
    # Scores far out: large log-ratios (saturating sigmoids, big squares).
    for loss_type, kw in [("sigmoid", {}), ("ipo", {}), ("exo_pair", {"label_smoothing": 1e-3}),
                          ("apo_down", {}), ("discopop", {}), ("nca_pair", {})]:
        add(f"{loss_type}_b6_large_wide_beta0.5", loss_type, batch=6, scale="large", rho_tok=3.0,
            beta=0.5, **kw)

    # f-divergences on every loss type that accepts them. alpha_divergence runs in float32:
    # TRL's clamp table is {float16: 11, bfloat16: 80, float32: 80} (no float64 key).
    fdiv_types = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop",
                  "sft"]
    smoothing = {"exo_pair": 0.01, "robust": 0.15}
    for k, loss_type in enumerate(fdiv_types):
        ls = smoothing.get(loss_type, 0.0)
        add(f"{loss_type}_forward_kl", loss_type, batch=5, scale="small", rho_tok=0.3,
            beta=[0.1, 0.5][k % 2], f_divergence_type="forward_kl", label_smoothing=ls)
        add(f"{loss_type}_js_divergence", loss_type, batch=6, scale="medium", rho_tok=0.2,
            beta=[0.5, 0.1][k % 2], f_divergence_type="js_divergence", label_smoothing=ls)
        add(f"{loss_type}_alpha_divergence_f32", loss_type, batch=4, scale="small", rho_tok=0.4,
            beta=[0.1, 2.0][k % 2], f_divergence_type="alpha_divergence", label_smoothing=ls,
            dtype="float32")
    add("sigmoid_alpha_divergence_coef0.3_f32", "sigmoid", batch=7, scale="medium", rho_tok=0.3,
        beta=0.1, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3,
        dtype="float32")
    add("hinge_alpha_divergence_coef0.8_f32", "hinge", batch=5, scale="small", rho_tok=0.5,
        beta=0.5, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.8,
        dtype="float32")
    # coef 1 is TRL's limit case (falls back to reverse_kl before the clamp table): float64 works.
    add("sigmoid_alpha_divergence_coef1", "sigmoid", batch=4, scale="small", rho_tok=0.3,
        beta=0.1, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0)
    # (alpha - 1) rho > 80 on some rows (rho < -160 nats): TRL's clamp at 80 is hit.
    add("sigmoid_alpha_divergence_clamp_f32", "sigmoid", batch=6, scale="large",
        ref_tok_scale=0.02, beta=0.1, f_divergence_type="alpha_divergence", dtype="float32")
    add("hinge_alpha_divergence_clamp_f32", "hinge", batch=6, scale="large", ref_tok_scale=0.02,
        beta=0.5, f_divergence_type="alpha_divergence", dtype="float32")

    # Multi-loss (MPO): TRL sums weight_j * batch-mean(loss_j).
    add("mpo_sigmoid_bco_sft", ["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0],
        batch=6, scale="medium", rho_tok=0.2, beta=0.1)
    add("mpo_hinge_ipo_apo_zero", ["hinge", "ipo", "apo_zero"], loss_weights=[1.0, 0.5, 2.0],
        batch=5, scale="small", rho_tok=0.3, beta=0.5)
    add("rpo_sigmoid_sft", ["sigmoid", "sft"], batch=4, scale="medium", rho_tok=0.2, beta=0.1)
    add("mpo_aot_nca_sppo", ["aot", "nca_pair", "sppo_hard"], loss_weights=[0.5, 0.3, 0.01],
        batch=8, scale="small", rho_tok=0.3, beta=0.5)
    # TRL-valid mixes whose hyper-parameters apply to only some of the types.
    add("mpo_sigmoid_robust_ls0.1", ["sigmoid", "robust"], loss_weights=[1.0, 0.5],
        label_smoothing=0.1, batch=5, scale="medium", rho_tok=0.2, beta=0.1)
    add("rpo_sigmoid_sft_js_divergence", ["sigmoid", "sft"], f_divergence_type="js_divergence",
        batch=4, scale="small", rho_tok=0.3, beta=0.5)

    # LD-DPO (ld_alpha): per-token log-probs stored; reference via a reference model or via
    # TRL's precomputation, which both apply ld_alpha.
    add("ld_sigmoid_alpha0.5", "sigmoid", ld_alpha=0.5, batch=5, scale="small", rho_tok=0.3,
        beta=0.1, precompute_ref=False)
    add("ld_ipo_alpha0.3", "ipo", ld_alpha=0.3, batch=4, scale="medium", rho_tok=0.2, beta=0.5,
        precompute_ref=False)
    add("ld_sigmoid_norm_alpha0", "sigmoid_norm", ld_alpha=0.0, batch=6, scale="small",
        rho_tok=0.3, beta=2.0, precompute_ref=True)
    add("ld_aot_alpha0.5_precomputed", "aot", ld_alpha=0.5, label_smoothing=0.1, batch=6,
        scale="small", rho_tok=0.3, beta=0.1, precompute_ref=True)
    add("ld_apo_down_alpha1", "apo_down", ld_alpha=1.0, batch=3, scale="small", rho_tok=0.3,
        beta=0.1, precompute_ref=False)
    # TRL's sft term uses the raw token log-probs, not the LD-weighted sums.
    add("ld_rpo_sigmoid_sft_alpha0.5", ["sigmoid", "sft"], ld_alpha=0.5, batch=4, scale="small",
        rho_tok=0.3, beta=0.1, precompute_ref=False)

    # WPO (use_weighting): per-pair weights exp(a_w) exp(a_l).
    for loss_type, kw in [("sigmoid", {}), ("hinge", {}), ("ipo", {}), ("bco_pair", {}),
                          ("discopop", {}), ("exo_pair", {"label_smoothing": 0.01})]:
        add(f"wpo_{loss_type}", loss_type, use_weighting=True, batch=4, scale="small",
            rho_tok=0.3, beta=0.1, precompute_ref=False, **kw)
    add("wpo_mpo_sigmoid_bco", ["sigmoid", "bco_pair"], loss_weights=[0.7, 0.3],
        use_weighting=True, batch=5, scale="small", rho_tok=0.3, beta=0.5)
    add("wpo_ld_sigmoid_alpha0.5", "sigmoid", use_weighting=True, ld_alpha=0.5, batch=4,
        scale="small", rho_tok=0.3, beta=0.1, precompute_ref=False)
    return cases


# ---------------------------------------------------------------------------------------------
# KTO.

def kto_case(rng, name, loss_type, *, batch=6, scale="small", rho_tok=0.2, beta=0.1,
             desirable_weight=1.0, undesirable_weight=1.0, precompute_ref=True, labels=None,
             kl_shift=0.0):
    args = KTOConfig(**CONFIG_KW, beta=beta, loss_type=loss_type,
                     desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                     precompute_ref_log_probs=precompute_ref, per_device_train_batch_size=batch)
    n = batch
    if labels is None:
        labels = [bool(x) for x in rng.uniform(size=n) < 0.5]
    prompts, comps = [int(x) for x in rng.integers(1, 7, n)], _lengths(rng, n, scale)
    ids, att, comp = _sequences(rng, prompts, comps)
    # KL completions: row i's prompt with row i-1's completion (TRL's `add_kl_completion_ids`).
    kl_comps = [comps[i - 1] for i in range(n)]
    kl_ids, kl_att, kl_comp = _sequences(rng, prompts, kl_comps)
    for i in range(n):  # the real tokens: prompt i + completion i-1
        kl_ids[i, : prompts[i]] = ids[i, : prompts[i]]
        j = (i - 1) % n
        completion = ids[j, prompts[j] : prompts[j] + comps[j]]
        kl_ids[i, prompts[i] : prompts[i] + kl_comps[i]] = completion
    tok = SCALES[scale][1]
    fields = _fields(rng, n, ids.shape[1] - 1, tok, torch.float64)
    kl_fields = _fields(rng, n, kl_ids.shape[1] - 1, tok, torch.float64)
    ref = _ref_fields(rng, fields, rho_tok, torch.float64)
    kl_ref = _ref_fields(rng, kl_fields, rho_tok, torch.float64)
    # Shift the mismatched pairs' policy-minus-reference to steer the KL estimate's sign.
    kl_ref["log_probs"] = kl_ref["log_probs"] + kl_shift
    model, ref_model = StandInLM(), StandInLM()
    model.add(ids, **fields)
    model.add(kl_ids, **kl_fields)
    ref_model.add(ids, **ref)
    ref_model.add(kl_ids, **kl_ref)

    t = KTOTrainer.__new__(KTOTrainer)
    t.args = args
    t.model = model
    t.ref_model = None if precompute_ref else ref_model
    t.accelerator = IdentityAccelerator()
    t.aux_loss_enabled = False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens = 0
    t._tp_size = 1
    # Verbatim from KTOTrainer.__init__ (trl 1.16.0).
    calculate_kl = args.loss_type not in ["apo_zero_unpaired"]
    t.beta = args.beta
    t.precompute_ref_logps = args.precompute_ref_log_probs
    t.loss_type = args.loss_type
    t.desirable_weight = args.desirable_weight
    t.undesirable_weight = args.undesirable_weight
    t.calculate_KL = calculate_kl
    assert not calculate_kl or (args.train_sampling_strategy == "sequential"
                                and args.per_device_train_batch_size > 1)

    inputs = {"input_ids": ids, "attention_mask": att, "completion_mask": comp,
              "label": torch.tensor(labels, dtype=torch.bool)}
    if calculate_kl:
        inputs.update({"KL_input_ids": kl_ids, "KL_attention_mask": kl_att,
                       "KL_completion_mask": kl_comp})
    if precompute_ref:
        ref_logps, ref_kl_logps = t.compute_ref_log_probs(ref_model, inputs)
        inputs["ref_logps"] = ref_logps
        if calculate_kl:
            inputs["ref_KL_logps"] = ref_kl_logps
    model.train()
    with torch.no_grad():
        loss = t._compute_loss(model, inputs, return_outputs=False)
    metrics = {k: v[-1] for k, v in t._metrics["train"].items()
               if k == "kl" or k.startswith(("rewards/", "logps/"))}

    def sums(f, c):
        return f["log_probs"].masked_fill(c[:, 1:] == 0, 0).sum(-1)

    case = {
        "name": name, "trainer": "kto", "method": "trl.KTOTrainer._compute_loss",
        "dtype": "float64",
        "params": {"loss_type": loss_type, "beta": beta, "desirable_weight": desirable_weight,
                   "undesirable_weight": undesirable_weight, "precompute_ref": precompute_ref,
                   "calculate_kl": calculate_kl},
        "inputs": {"policy_logps": _f(sums(fields, comp)), "ref_logps": _f(sums(ref, comp)),
                   "desirable": labels},
        "outputs": {"loss": float(loss), "metrics": metrics},
    }
    if calculate_kl:
        case["inputs"]["kl_logps"] = _f(sums(kl_fields, kl_comp))
        case["inputs"]["ref_kl_logps"] = _f(sums(kl_ref, kl_comp))
    return case


def kto_cases(rng):
    return [
        kto_case(rng, "kto_b6_small_beta0.1", "kto", batch=6, kl_shift=-0.05),
        kto_case(rng, "kto_b8_medium_beta0.5_refmodel", "kto", batch=8, scale="medium",
                 beta=0.5, precompute_ref=False, kl_shift=-0.02),
        kto_case(rng, "kto_b5_weights_1.33_1", "kto", batch=5, desirable_weight=1.33,
                 undesirable_weight=1.0, beta=0.1, kl_shift=-0.1),
        kto_case(rng, "kto_b12_large_beta0.05_weights", "kto", batch=12, scale="large",
                 beta=0.05, desirable_weight=1.0, undesirable_weight=0.75, kl_shift=-0.05),
        kto_case(rng, "kto_kl_clamped_to_zero", "kto", batch=6, kl_shift=+0.5, beta=0.5),
        kto_case(rng, "kto_all_desirable", "kto", batch=4, labels=[True] * 4, beta=2.0,
                 kl_shift=-0.1),
        kto_case(rng, "kto_all_undesirable_refmodel", "kto", batch=3,
                 labels=[False] * 3, beta=0.1, precompute_ref=False, kl_shift=-0.1),
        kto_case(rng, "apo_zero_unpaired_b6", "apo_zero_unpaired", batch=6, beta=0.1),
        kto_case(rng, "apo_zero_unpaired_b8_refmodel_weights", "apo_zero_unpaired", batch=8,
                 scale="medium", beta=0.5, desirable_weight=0.8, undesirable_weight=1.2,
                 precompute_ref=False),
        kto_case(rng, "apo_zero_unpaired_b4_large", "apo_zero_unpaired", batch=4,
                 scale="large", beta=0.05, rho_tok=1.0),
    ]


# ---------------------------------------------------------------------------------------------
# CPO / SimPO / AlphaPO and ORPO (reference-free).

def _seq_logps(rng, n, scale, dtype):
    lens = torch.tensor(_lengths(rng, n, scale), dtype=torch.long)
    per_tok = rng.gamma(2.0, SCALES[scale][1] / 2.0, n)
    sums = torch.from_numpy(-per_tok * lens.numpy()).to(dtype)
    return sums, lens


def cpo_case(rng, name, loss_type, *, batch=4, scale="medium", beta=0.1, label_smoothing=0.0,
             cpo_alpha=1.0, simpo_gamma=0.5, alpha=0.0):
    args = CPOConfig(**CONFIG_KW, beta=beta, loss_type=loss_type,
                     label_smoothing=label_smoothing, cpo_alpha=cpo_alpha,
                     simpo_gamma=simpo_gamma, alpha=alpha)
    cw, lw = _seq_logps(rng, batch, scale, torch.float64)
    cl, ll = _seq_logps(rng, batch, scale, torch.float64)
    average = args.loss_type in ["ipo", "simpo"]  # as CPOTrainer.concatenated_forward
    pw, pl = (cw / lw, cl / ll) if average else (cw, cl)
    nll = torch.tensor(float(rng.uniform(0.5, 3.0)), dtype=torch.float64)
    t = CPOTrainer.__new__(CPOTrainer)
    t.args = args
    t.accelerator = IdentityAccelerator()
    # Verbatim from CPOTrainer.__init__ (trl 1.16.0).
    t.beta = args.beta
    t.label_smoothing = args.label_smoothing
    t.loss_type = args.loss_type
    t.cpo_alpha = args.cpo_alpha
    t.aux_loss_enabled = False
    if args.loss_type == "simpo":
        t.simpo_gamma = args.simpo_gamma
    t.alpha = args.alpha
    logits = torch.zeros(batch, dtype=torch.float64)
    t.concatenated_forward = lambda model, batch_: (pw, pl, logits, logits, nll)
    with torch.no_grad():
        losses, _, _ = t.cpo_loss(pw, pl)
        loss, metrics = t.get_batch_loss_metrics(None, {}, "train")
    return {
        "name": name, "trainer": "cpo", "method": "trl.experimental.cpo.CPOTrainer.cpo_loss",
        "dtype": "float64",
        "params": {"loss_type": args.loss_type, "beta": beta, "label_smoothing": label_smoothing,
                   "cpo_alpha": args.cpo_alpha, "simpo_gamma": args.simpo_gamma,
                   "alpha": args.alpha, "average_log_prob": average},
        "inputs": {"chosen_logps": _f(cw), "rejected_logps": _f(cl), "chosen_lengths": _i(lw),
                   "rejected_lengths": _i(ll), "nll_loss": float(nll)},
        "outputs": {"loss": float(loss), "losses": _f(losses),
                    "metrics": {k: v for k, v in metrics.items()
                                if k.startswith(("rewards/", "logps/")) or k == "nll_loss"}},
    }


def cpo_cases(rng):
    return [
        cpo_case(rng, "cpo_sigmoid_b4_small_beta0.1", "sigmoid", scale="small"),
        cpo_case(rng, "cpo_sigmoid_b6_medium_ls0.1", "sigmoid", batch=6, label_smoothing=0.1,
                 beta=0.5),
        cpo_case(rng, "cpo_sigmoid_b3_large_beta0.05_noNLL", "sigmoid", batch=3, scale="large",
                 beta=0.05, cpo_alpha=0.0),
        cpo_case(rng, "cpo_hinge_b5_small_beta0.5", "hinge", batch=5, scale="small", beta=0.5),
        cpo_case(rng, "cpo_hinge_b4_medium_beta0.1", "hinge", scale="medium", beta=0.1),
        cpo_case(rng, "cpo_ipo_b4_medium_beta0.1", "ipo", scale="medium", beta=0.1),
        cpo_case(rng, "cpo_ipo_b8_large_beta2", "ipo", batch=8, scale="large", beta=2.0),
        cpo_case(rng, "simpo_b4_medium_beta2_gamma1", "simpo", beta=2.0, simpo_gamma=1.0,
                 cpo_alpha=0.0),
        cpo_case(rng, "simpo_b8_large_beta2.5_gamma1.25_ls0.1", "simpo", batch=8,
                 scale="large", beta=2.5, simpo_gamma=1.25, label_smoothing=0.1, cpo_alpha=0.0),
        cpo_case(rng, "simpo_b2_small_default_gamma_cpo_alpha1", "simpo", batch=2,
                 scale="small", beta=0.1),
        cpo_case(rng, "alphapo_b6_medium_alpha0.25", "alphapo", batch=6, beta=2.0,
                 simpo_gamma=1.0, alpha=0.25),
        cpo_case(rng, "alphapo_b4_large_alpha-0.5", "alphapo", batch=4, scale="large",
                 beta=2.5, simpo_gamma=0.5, alpha=-0.5),
        cpo_case(rng, "cpo_sigmoid_alpha0.1", "sigmoid", batch=4, scale="small", beta=0.1,
                 alpha=0.1),
        cpo_case(rng, "cpo_hinge_alpha-0.2", "hinge", batch=4, scale="small", beta=0.5,
                 alpha=-0.2),
        cpo_case(rng, "cpo_ipo_alpha0.5", "ipo", batch=5, scale="medium", beta=0.5, alpha=0.5),
    ]


def orpo_case(rng, name, *, batch=4, scale="medium", beta=0.1, means=None):
    # ORPO's odds_ratio_loss casts to float32, so TRL's numbers are float32: the mean log-probs
    # are formed in float32 from float32 sums (as our functions do from the stored sums).
    args = ORPOConfig(**CONFIG_KW, beta=beta)
    if means is None:
        cw, lw = _seq_logps(rng, batch, scale, torch.float32)
        cl, ll = _seq_logps(rng, batch, scale, torch.float32)
    else:  # chosen mean log-probs straddling the log1mexp branch at -ln 2, and near 0
        lw = torch.tensor(_lengths(rng, len(means), scale))
        ll = torch.tensor(_lengths(rng, len(means), scale))
        cw = (torch.tensor(means, dtype=torch.float64) * lw).float()
        rejected_means = rng.uniform(-3.0, -1e-3, len(means))
        cl = (torch.from_numpy(rejected_means) * ll).float()
        batch = len(means)
    pw, pl = cw / lw.float(), cl / ll.float()
    nll = torch.tensor(float(rng.uniform(0.5, 3.0)), dtype=torch.float32)
    t = ORPOTrainer.__new__(ORPOTrainer)
    t.args = args
    t.accelerator = IdentityAccelerator()
    t.beta = args.beta  # verbatim from ORPOTrainer.__init__
    t.aux_loss_enabled = False
    logits = torch.zeros(batch, dtype=torch.float32)
    t.concatenated_forward = lambda model, batch_: (pw, pl, logits, logits, nll)
    with torch.no_grad():
        losses, _, _, _, _ = t.odds_ratio_loss(pw, pl)
        loss, metrics = t.get_batch_loss_metrics(None, {}, "train")
    assert losses.dtype == torch.float32
    return {
        "name": name, "trainer": "orpo",
        "method": "trl.experimental.orpo.ORPOTrainer.odds_ratio_loss", "dtype": "float32",
        "params": {"beta": beta},
        "inputs": {"chosen_logps": _f(cw), "rejected_logps": _f(cl), "chosen_lengths": _i(lw),
                   "rejected_lengths": _i(ll), "nll_loss": float(nll)},
        # TRL's `losses` are beta * log sigma(log odds) (the total subtracts their mean).
        "outputs": {"loss": float(loss), "losses": _f(losses),
                    "metrics": {k: v for k, v in metrics.items()
                                if k.startswith(("rewards/", "logps/", "log_odds"))
                                or k == "nll_loss"}},
    }


def orpo_cases(rng):
    return [
        orpo_case(rng, "orpo_b4_small_beta0.1", scale="small"),
        orpo_case(rng, "orpo_b8_medium_beta0.25", batch=8, beta=0.25),
        orpo_case(rng, "orpo_b3_large_beta1", batch=3, scale="large", beta=1.0),
        orpo_case(rng, "orpo_branch_and_near_zero", scale="small", beta=0.1,
                  means=[-1e-3, -0.05, -0.6, -0.69, -0.7, -0.8, -2.0, -5.0]),
    ]


# ---------------------------------------------------------------------------------------------
# Reward model (Bradley-Terry).

def reward_case(rng, name, *, batch=4, reward_scale=1.0, margin=False,
                center_rewards_coefficient=None):
    args = RewardConfig(**CONFIG_KW, center_rewards_coefficient=center_rewards_coefficient)
    rewards = torch.from_numpy(rng.normal(0.0, reward_scale, 2 * batch))
    model = StandInRewardModel(rewards)
    ids, att, _ = _sequences(rng, [2] * (2 * batch), _lengths(rng, 2 * batch, "small"))
    inputs = {"input_ids": ids, "attention_mask": att}
    if margin:
        inputs["margin"] = torch.from_numpy(rng.uniform(0.0, 2.0 * reward_scale, batch))
    t = RewardTrainer.__new__(RewardTrainer)
    t.args = args
    t.model = model
    t.accelerator = IdentityAccelerator()
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens = 0
    t._tp_size = 1
    model.train()
    with torch.no_grad():
        loss = t.compute_loss(model, dict(inputs))
    metrics = {k: v[-1] for k, v in t._metrics["train"].items() if k != "num_tokens"}
    case = {
        "name": name, "trainer": "reward", "method": "trl.RewardTrainer.compute_loss",
        "dtype": "float64",
        "params": {"center_rewards_coefficient": center_rewards_coefficient},
        "inputs": {"chosen_rewards": _f(rewards[:batch]), "rejected_rewards": _f(rewards[batch:])},
        "outputs": {"loss": float(loss), "metrics": metrics},
    }
    if margin:
        case["inputs"]["margin"] = _f(inputs["margin"])
    return case


def reward_cases(rng):
    return [
        reward_case(rng, "bt_b4"),
        reward_case(rng, "bt_b8_margin", batch=8, margin=True),
        reward_case(rng, "bt_b6_center0.01", batch=6, reward_scale=3.0,
                    center_rewards_coefficient=0.01),
        reward_case(rng, "bt_b16_margin_center0.05", batch=16, reward_scale=10.0, margin=True,
                    center_rewards_coefficient=0.05),
        reward_case(rng, "bt_b1_margin", batch=1, margin=True),
    ]


def main():
    warnings.filterwarnings("ignore", category=FutureWarning)  # TrainingArguments deprecations
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    cases = dpo_cases(rng) + kto_cases(rng) + cpo_cases(rng) + orpo_cases(rng) + reward_cases(rng)
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    trl_types = trl_dpo_loss_types()
    covered = {t for c in cases if c["trainer"] == "dpo" for t in c["params"]["loss_type"]}
    assert set(trl_types) <= covered, sorted(set(trl_types) - covered)
    data = {
        "description": "Golden values from TRL's own loss code; see make_trl_preference_goldens.py",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
        "seed": SEED,
        "trl_dpo_loss_types": trl_types,
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    counts = defaultdict(int)
    for c in cases:
        counts[c["trainer"]] += 1
    print(f"wrote {OUT}: {len(cases)} cases {dict(counts)}, {os.path.getsize(OUT)} bytes, "
          f"trl {trl.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
