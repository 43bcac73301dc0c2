"""`alignax eval`: task accuracy of exports and preference metrics on a pairs file."""

import json

import jax
import numpy as np
import pytest

from alignax import cli, data
from alignax.models import ByteTokenizer, init_model, tiny_config, to_hf
from alignax.train.evaluation import task_accuracy

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = tiny_config("llama", hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1,
                      num_layers=1)
    policy, ref = init_model(cfg, seed=0), init_model(cfg, seed=1)
    to_hf(policy, str(root / "run" / "hf"))     # a train workdir: its hf/ is used
    to_hf(ref, str(root / "ref"))
    pairs = data.arithmetic.preference_pairs(5, seed=3, max_operand=9, error_offsets=(1,))
    data.arithmetic.write_jsonl(pairs, str(root / "pairs.jsonl"))
    return root, policy, ref, pairs


def _seq_logp(model, prompt: str, completion: str) -> float:
    """Summed log-prob of `completion` after `prompt` from one full forward (no padding)."""
    p, c = TOK.encode(prompt), TOK.encode(completion) + [TOK.eos_id]
    logits = np.asarray(model(jax.numpy.asarray([p + c]))[0], np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    lp = logits - logz[:, None]
    return float(sum(lp[len(p) - 1 + i, t] for i, t in enumerate(c)))


def test_pair_metrics_match_a_direct_forward(setup, capsys):
    root, policy, ref, pairs = setup
    out = root / "res.json"
    code = cli.main(["eval", "--model", str(root / "run"), "--data", str(root / "pairs.jsonl"),
                     "--reference", str(root / "ref"), "--beta", "0.5", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    res = next(iter(json.loads(out.read_text()).values()))
    lp = np.array([[_seq_logp(policy, p.prompt, x) for x in (p.chosen, p.rejected)]
                   for p in pairs])
    rp = np.array([[_seq_logp(ref, p.prompt, x) for x in (p.chosen, p.rejected)] for p in pairs])
    assert res["num_pairs"] == 5
    np.testing.assert_allclose(res["logps/chosen"], lp[:, 0].mean(), rtol=1e-4)
    np.testing.assert_allclose(res["logps/rejected"], lp[:, 1].mean(), rtol=1e-4)
    assert res["logps/accuracy"] == np.mean(lp[:, 0] > lp[:, 1])
    r = 0.5 * (lp - rp)
    np.testing.assert_allclose(res["rewards/margins"], np.mean(r[:, 0] - r[:, 1]), atol=1e-4)
    assert res["rewards/accuracies"] == np.mean(r[:, 0] > r[:, 1])


def test_task_accuracy_and_errors(setup, capsys):
    root, policy, _, _ = setup
    code = cli.main(["eval", "--model", str(root / "run"), "--num-prompts", "8",
                     "--json", str(root / "acc.json")])
    assert code == 0
    (acc,) = json.loads((root / "acc.json").read_text()).values()
    prompts = [p.prompt for p in data.arithmetic.preference_pairs(8, seed=10_000, max_operand=20,
                                                              error_offsets=(1,))]
    assert acc["task_accuracy"] == task_accuracy(policy, TOK, prompts, max_new_tokens=6)
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(root / "missing")]) == 2
    assert "missing is not a directory" in capsys.readouterr().err
    (root / "bad.jsonl").write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    assert cli.main(["eval", "--model", str(root / "ref"), "--data",
                     str(root / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and ":1" in err
