"""`alignax compare`: the statistics (bootstrap interval, exact sign-flip test) against hand
values, resumable runs, the report, and one real two-seed comparison of smoke runs."""

import json
import os

import numpy as np
import pytest

from alignax import cli, compare


def test_sign_flip_test_is_exact():
    assert compare.paired_test([0.02, 0.03, 0.01, 0.04, 0.02]) == 2 / 32
    assert compare.paired_test([0.02, 0.03, 0.01, 0.04, 0.02, 0.03]) == 2 / 64
    # One negative difference of the smallest size: patterns reaching |mean| = 0.09 / 5.
    d = [0.03, 0.02, 0.03, -0.01, 0.02]
    signs = np.array(np.meshgrid(*[[1, -1]] * 5)).reshape(5, -1).T
    want = np.mean(np.abs((signs * d).mean(1)) >= abs(np.mean(d)) - 1e-12)
    assert compare.paired_test(d) == want
    assert compare.paired_test([0.0, 0.0]) == 1.0


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    x = [0.90, 0.91, 0.88, 0.93, 0.89]
    lo, hi = compare.bootstrap_interval(x)
    assert (lo, hi) == compare.bootstrap_interval(x)
    assert min(x) <= lo < np.mean(x) < hi <= max(x)
    assert np.isnan(compare.bootstrap_interval([0.5])[0])


def test_runs_are_resumed_and_reported(tmp_path):
    calls = []
    accuracy = {"a": [0.90, 0.92, 0.91], "b": [0.80, 0.83, 0.81]}

    def fake_run(config, overrides, workdir):
        name = os.path.basename(os.path.dirname(workdir))
        seed = int(overrides[-1].split("=")[1])
        calls.append((name, seed, tuple(overrides)))
        os.makedirs(workdir, exist_ok=True)
        summary = {"eval_after": {"task_accuracy": accuracy[name][seed]}}
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary

    methods = [compare.Method("a", "a.py"), compare.Method("b", "b.py")]
    runs = compare.run_all(methods, range(3), str(tmp_path), overrides=["--config.x=1"],
                           run=fake_run, log=lambda m: None)
    assert len(calls) == 6 and calls[0] == ("a", 0, ("--config.x=1", "--config.train.seed=0"))
    compare.run_all(methods, range(3), str(tmp_path), run=fake_run, log=lambda m: None)
    assert len(calls) == 6  # finished runs are read, not rerun
    result = compare.report(runs, "eval_after.task_accuracy")
    a = result["methods"]["a"]
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.91)
    assert a["std"] == pytest.approx(np.std([0.90, 0.92, 0.91], ddof=1))
    (pair,) = result["pairs"]
    assert pair["mean_difference"] == pytest.approx(0.0966667, abs=1e-6)
    assert pair["p"] == 2 / 8 and not pair["significant"]  # 3 seeds can never reach 0.05
    text = compare.markdown(result)
    assert "| a - b | 3 | +0.0967 |" in text
    with pytest.raises(KeyError, match="no 'accuracy'"):
        compare.report(runs, "eval_after.accuracy")


def test_method_names():
    assert compare.method_name("experiments/configs/grpo.py:dapo") == "grpo-dapo"
    assert compare.method_name("experiments/configs/sft.py") == "sft"


@pytest.mark.slow
def test_cli_compares_two_seeds_of_smoke_runs(tmp_path, capsys):
    root = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")
    code = cli.main(["compare", "--config", os.path.join(root, "sft.py:smoke"), "--config",
                     os.path.join(root, "dpo.py:smoke"), "--seeds", "2", "--workdir",
                     str(tmp_path), "--set", "train.steps=2", "--set", "train.export_hf=False",
                     "--metric", "eval_after.loss"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| sft-smoke | 2 |" in out and "| sft-smoke - dpo-smoke | 2 |" in out
    result = json.loads((tmp_path / "compare.json").read_text())
    losses = result["methods"]["sft-smoke"]["values"]
    assert set(losses) == {"0", "1"} and losses["0"] != losses["1"]  # the seed matters
