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
