"""Writes trl_grpo_goldens.json: GRPO losses, gradients, metrics and advantages from TRL 1.16.0.

Run with the oracle environment (torch CPU + trl==1.16.0), from the repository root:

    /tmp/v/bin/python tests/testdata/make_trl_grpo_goldens.py

Loss cases drive the real `GRPOTrainer._compute_loss` (and `_get_per_token_logps_and_entropies`)
on a trainer built with `GRPOTrainer.__new__`: only the attributes `_compute_loss` reads are set,
and a stand-in model returns given per-token log-probs (a leaf tensor, so TRL's loss is
differentiated back to the per-token policy log-probs). Advantage cases run TRL's
`sum_then_normalize` lines from `_generate_and_score_completions` with `trl.trainer.utils.nanstd`.
The test suite reads only the JSON.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import pathlib
import types
from collections import defaultdict

import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

OUT = pathlib.Path(__file__).with_name("trl_grpo_goldens.json")
B, T, P = 6, 5, 2  # completions, completion tokens, prompt tokens (prompt log-probs are dropped)


class _Accelerator:
    num_processes = 1
    process_index = 0
    is_main_process = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def autocast(self):
        return contextlib.nullcontext()


class _StandInModel:
    """Returns fixed per-token log-probs for the completion positions (zeros on the prompt)."""

    training = True

    def __init__(self, logps):
        self.logps = logps

    def __call__(self, input_ids, attention_mask, labels=None, fused_lm_head=True, **kw):
        prompt = torch.zeros(self.logps.shape[0], P, dtype=self.logps.dtype)
        return types.SimpleNamespace(log_probs=torch.cat([prompt, self.logps], 1),
                                     entropy=torch.zeros(self.logps.shape[0], P + T))


def _trainer(case):
    t = GRPOTrainer.__new__(GRPOTrainer)
    t.args = types.SimpleNamespace(use_bias_correction_kl=case["use_bias_correction_kl"],
                                   delta=case["delta"], steps_per_generation=case["spg"])
    t.accelerator = _Accelerator()
    t.model = types.SimpleNamespace(training=True)
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t.top_entropy_quantile = 1.0
    t.off_policy_mask_threshold = None
    t.aux_loss_enabled = False
    t.use_vllm = False
    t._entropy_bonus_enabled = False
    t.beta = case["beta"]
    t.loss_type = case["loss_type"]
    t.importance_sampling_level = case["importance_sampling_level"]
    t.epsilon_low = case["epsilon"]
    t.epsilon_high = case["epsilon_high"] if case["epsilon_high"] is not None else case["epsilon"]
    t.max_completion_length = case["max_completion_length"]
    t.current_gradient_accumulation_steps = 1
    return t


def _loss_case(gen, case):
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    if case["empty_row"]:
        lengths[2] = 0
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.float64)
    logps = (-torch.rand(B, T, generator=gen, dtype=torch.float64) * 2.0 - 0.05)
    old = logps + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    adv[1] = 0.0  # a zero advantage (all-equal group) row
    leaf = logps.clone().requires_grad_(True)
    trainer = _trainer(case)
    num_items = mask.sum() + case["extra_items"]
    inputs = {
        "prompt_ids": torch.ones(B, P, dtype=torch.long),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "num_items_in_batch": num_items,
    }
    if not case["on_policy"]:
        inputs["old_per_token_logps"] = old
    if case["beta"] != 0.0:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(_StandInModel(leaf), inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()
               if k in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
                        "clip_ratio/region_mean")}
    dapo_norm = num_items.clamp(min=1.0) / 1 * 1 / case["spg"]
    return {
        **case,
        "logps": logps.tolist(), "old_logps": old.tolist(), "ref_logps": ref.tolist(),
        "mask": mask.tolist(), "advantages": adv.tolist(),
        "dapo_normalizer": float(dapo_norm),
        "loss": float(loss.detach()), "grad_logps": leaf.grad.tolist(), "metrics": metrics,
    }


def _advantage_case(gen, scale_rewards, with_nan):
    g, k = 4, 2
    rewards_per_func = torch.randint(0, 3, (3 * g, k), generator=gen).to(torch.float64)
    rewards_per_func[4:8] = torch.tensor([1.0, 0.5])  # a group whose rewards are all equal
    if with_nan:
        rewards_per_func[1] = torch.nan  # unscorable: every function returned None
        rewards_per_func[9, 0] = torch.nan  # one function skipped this completion
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)
    # Verbatim from GRPOTrainer._generate_and_score_completions (sum_then_normalize).
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, g), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(g, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    return {"scale_rewards": scale_rewards, "num_generations": g,
            "rewards": [None if r != r else r for r in rewards.tolist()],
            "advantages": advantages.tolist()}


def main():
    gen = torch.Generator().manual_seed(0)
    loss_cases = []
    for loss_type, level, (beta, bias), eps_high in itertools.product(
            ("grpo", "bnpo", "dr_grpo", "dapo"), ("token", "sequence"),
            ((0.0, True), (0.04, False), (0.04, True)), (None, 0.28)):
        case = dict(loss_type=loss_type, importance_sampling_level=level, beta=beta,
                    use_bias_correction_kl=bias, epsilon=0.2, epsilon_high=eps_high,
                    delta=None, on_policy=False, empty_row=False, extra_items=0.0, spg=1,
                    max_completion_length=8)
        loss_cases.append(_loss_case(gen, case))
    extras = [
        dict(loss_type="dapo", on_policy=True, beta=0.04, use_bias_correction_kl=True),
        dict(loss_type="grpo", on_policy=True, beta=0.04, use_bias_correction_kl=True,
             importance_sampling_level="sequence"),
        dict(loss_type="grpo", empty_row=True, beta=0.04),
        dict(loss_type="dapo", extra_items=7.0, spg=2, epsilon_high=0.28),
        dict(loss_type="bnpo", delta=1.1, beta=0.04, use_bias_correction_kl=True),
    ]
    base = dict(importance_sampling_level="token", beta=0.0, use_bias_correction_kl=True,
                epsilon=0.2, epsilon_high=None, delta=None, on_policy=False, empty_row=False,
                extra_items=0.0, spg=1, max_completion_length=8)
    loss_cases += [_loss_case(gen, {**base, **e}) for e in extras]
    adv_cases = [_advantage_case(gen, s, n)
                 for s, n in itertools.product(("group", "batch", "none"), (False, True))]
    OUT.write_text(json.dumps({
        "trl_version": trl.__version__, "torch_version": torch.__version__,
        "loss_cases": loss_cases, "advantage_cases": adv_cases}, indent=None) + "\n")
    print(f"wrote {OUT} ({len(loss_cases)} loss cases, {len(adv_cases)} advantage cases)")


if __name__ == "__main__":
    main()
