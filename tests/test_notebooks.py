"""Every notebook runs top to bottom (code cells executed in order in one namespace)."""

import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("ALIGNAX_ROOT", str(ROOT))
    monkeypatch.setenv("ALIGNAX_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("ALIGNAX_NOTEBOOK_STEPS", "30")
    monkeypatch.chdir(ROOT / "notebooks")
    cells = json.loads(path.read_text())["cells"]
    namespace = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    if path.name == "prototype_a_loss.ipynb":
        assert namespace["final"].keys() == {"sigmoid", "margin_dpo", "margin_dpo (algorithm)"}
        assert os.path.exists(tmp_path / "margin_dpo" / "metrics.jsonl")
        with open(tmp_path / "margin_algorithm" / "config.json") as f:
            cfg = json.load(f)
        assert cfg["algorithm"] == "margin_dpo" and cfg["loss"]["margin"] == 0.1
