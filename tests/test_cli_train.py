"""`alignax train` as a new user meets it: errors name the field (or show a bug's traceback),
typos never train, a finished or changed workdir is not silently retrained, online runs that
cannot be scored stop, custom reward functions load from an import path."""

import json
import os
import sys

import pytest

from alignax import cli
from tests.runs import CONFIGS

QUICK = ["--config.train.steps=2", "--config.train.eval_every=0", "--config.train.export_hf=False",
         "--config.checkpoint.every_steps=2"]


def _train(capsys, name, workdir, *overrides, variant="smoke"):
    capsys.readouterr()
    code = cli.main(["train", "--config", os.path.join(CONFIGS, f"{name}.py:{variant}"),
                     "--workdir", str(workdir), *QUICK, *overrides])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("name, overrides, message", [
    ("dpo", ["--config.loss.bta=0.5"], "config field 'loss.bta' is not a keyword of dpo"),
    ("dpo", ["--config.model.path=/nonexistent/model"],
     "config field 'model.path': /nonexistent/model is not a directory"),
    ("dpo", ["--config.train.batch_size=4"], "config field 'train.batch_size': batch size 4 "
                                             "is not divisible by the data-parallel size 8"),
])
def test_config_errors_name_the_field(tmp_path, capsys, name, overrides, message):
    code, err = _train(capsys, name, tmp_path / "w", *overrides)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing trained


def test_unknown_variant_and_help(tmp_path, capsys):
    code = cli.main(["train", "--config", os.path.join(CONFIGS, "dpo.py:nosuchvariant"),
                     "--workdir", str(tmp_path)])
    assert code == 2 and "unknown variant 'nosuchvariant'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--config.KEY=VALUE" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("alignax 0.")


def test_data_the_algorithm_cannot_use_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n"
                            for i in range(20)))
    code, err = _train(capsys, "dpo", tmp_path / "w", f"--config.data.path={path}")
    assert code == 2 and f"{path}:1: this algorithm trains on preference pairs" in err
    assert "hint" not in err  # skipping rows would not help here


def test_a_bug_shows_its_traceback(tmp_path, capsys, monkeypatch):
    # An internal ValueError (not a message alignax raised for the user) is not dressed up as a
    # config error: the traceback is what a bug report needs.
    from alignax.train import context

    def broken(*args, **kwargs):
        a, b = (1, 2, 3)  # noqa: F841 - the bug

    monkeypatch.setattr(context.Context, "rows", broken)
    with pytest.raises(ValueError, match="too many values to unpack"):
        _train(capsys, "dpo", tmp_path / "w")


def test_finished_and_changed_workdirs(tmp_path, capsys):
    work = tmp_path / "w"
    assert _train(capsys, "sft", work)[0] == 0
    summary = (work / "summary.json").read_text()
    assert json.loads(summary)["final_loss"] is not None
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["learning_rate"] > 0  # the next update's rate, as TRL logs it
    assert rows[1]["num_tokens"] > rows[0]["num_tokens"] > 0  # cumulative
    # The same command again: nothing to do, the summary stays.
    code, err = _train(capsys, "sft", work)
    assert code == 0 and "nothing to do" in err
    assert (work / "summary.json").read_text() == summary
    # Another config into the same workdir: an error listing the change, unless allowed.
    code, err = _train(capsys, "sft", work, "--config.optim.learning_rate=0.1")
    assert code == 2 and "optim.learning_rate: 0.003 -> 0.1" in err
    assert "--config.resume.allow_changes=True" in err
    code, _ = _train(capsys, "sft", work, "--config.train.steps=3",
                     "--config.resume.allow_changes=True")
    assert code == 0 and len((work / "metrics.jsonl").read_text().splitlines()) == 3


def test_online_run_that_no_reward_can_score_stops(tmp_path, capsys):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say hi {i}", "completion": "hi"}) + "\n"
                            for i in range(40)))
    code, err = _train(capsys, "grpo", tmp_path / "w", f"--config.data.path={path}",
                       "--config.data.max_prompt_length=16")
    assert code == 2 and "config field 'reward.functions': none of the" in err
    assert "arithmetic_correct" in err and "'Say hi" in err


def test_custom_reward_function_by_import_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompts, completions, **kwargs):\n"
        "    return [-float(len(c)) for c in completions]\n"
        "def broken(prompts, completions, **kwargs):\n"
        "    raise RuntimeError('sandbox down')\n")
    monkeypatch.chdir(tmp_path)
    code, err = _train(capsys, "grpo", tmp_path / "w",
                       "--config.reward.functions=('my_rewards:short', 'my_rewards:broken')",
                       "--config.reward.weights=(1.0, 1.0)", "--config.reward.timeout_seconds=30")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
    assert rows[-1]["rewards/my_rewards:short/mean"] < 0
    assert rows[-1]["rewards/my_rewards:broken/failures"] == 2  # one failed call per step
    sys.modules.pop("my_rewards", None)
    code, err = _train(capsys, "grpo", tmp_path / "x",
                       "--config.reward.functions=('no_such_module:fn',)")
    assert code == 2 and "cannot import 'no_such_module'" in err


def test_sample_errors(tmp_path, capsys):
    assert cli.main(["sample", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "no such directory" in capsys.readouterr().err
