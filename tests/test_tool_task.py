"""experiments/tool_task.py: its data files parse as training data, and its evaluation runs
end to end on a tiny export (numbers in range, the tool called through the environment)."""

import importlib.util
import json
import pathlib

import pytest

from alignax import data
from tests import hf_dirs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("tool_task", ROOT / "experiments/tool_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_files_are_training_data(tmp_path):
    task = _module()
    task.write_data(str(tmp_path), 8, 4)
    demos = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    first = demos[0]
    a, b = first["prompt"][:-1].split("+")
    total = int(a) + int(b)
    assert first["completion"] == f"<tool>calc({a}+{b})</tool><result>{total}</result>{total}"
    assert 100 <= int(a) <= 999
    records = [(("f", i), r) for i, r in enumerate(demos)]
    assert len(data.parse_records(records)) == 8
    prompts = (tmp_path / "prompts.jsonl").read_text().splitlines()
    assert len(data.parse_records([(("p", i), json.loads(x)) for i, x in enumerate(prompts)]))
    # Held-out evaluation sums are drawn with another seed than the training ones.
    assert not set(p for p, _ in task.sums(50, seed=3)) & set(p for p, _ in task.sums(50, seed=1))


@pytest.mark.slow
def test_evaluation_runs_on_a_tiny_export(tmp_path):
    model = hf_dirs.write_model(str(tmp_path / "model"))
    result = _module().evaluate(model, 4)
    for key in ("accuracy_without_tool", "accuracy_with_tool", "tool_call_fraction"):
        assert 0.0 <= result[key] <= 1.0
    assert result["example_with_tool"].startswith(result["example_without_tool"][:8])


def test_direct_fraction_mixes_demonstrations_without_the_tool(tmp_path):
    _module().write_data(str(tmp_path), 200, 4, direct_fraction=0.5)
    demos = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    direct = [d for d in demos if "<tool>" not in d["completion"]]
    assert 70 <= len(direct) <= 130
    for d in direct:  # the right sum, written directly
        a, b = d["prompt"][:-1].split("+")
        assert d["completion"] == str(int(a) + int(b))


def test_decoding_task_runs_a_guided_row(tmp_path):
    # experiments/decoding_task.py end to end on tiny random exports (one row: ARGS with DPO's
    # token-level implicit reward), its files written.
    from flax import nnx

    from alignax.models import init_model, tiny_config, to_hf
    from alignax.models.reward_model import RewardModel, save_reward_model

    paths = {}
    for i, name in enumerate(("sft", "dpo", "grpo")):
        paths[name] = str(tmp_path / name)
        to_hf(init_model(tiny_config("llama"), seed=i), paths[name])
    paths["rm"] = str(tmp_path / "rm")
    save_reward_model(RewardModel(init_model(tiny_config("llama"), seed=3), rngs=nnx.Rngs(0)),
                      paths["rm"])
    spec = importlib.util.spec_from_file_location("decoding_task",
                                                  ROOT / "experiments/decoding_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    module.main([f"--{k}={v}" for k, v in paths.items()] + [
        f"--out={out}", "--prompts=8", "--only=ARGS k=5 w=10"])
    (row,) = json.loads((out / "results.json").read_text())
    assert row["family"] == "ARGS" and row["scorer"] == "implicit"
    assert 0.0 <= row["accuracy"] <= 1.0 and row["forward_tokens_per_output_token"] > 3
    assert (out / "results.md").read_text().count("\n") == 3
