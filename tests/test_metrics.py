"""metrics.jsonl rows, resume truncation, TensorBoard events."""

import io
import json
import os

from alignax import metrics


def test_jsonl_rows_and_resume_truncation(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path))
    for step in (1, 2, 3):
        w.write(step, {"loss": 1.0 / step, "rewards/margins": float(step)})
    w.close()
    rows = metrics.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1] == {"step": 2, "loss": 0.5, "rewards/margins": 2.0}
    # A torn last line (killed mid-write) and rows past the checkpoint are dropped on resume.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    metrics.MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False).close()
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]
    events = os.listdir(tmp_path / "tensorboard")
    assert any(e.startswith("events.out.tfevents") for e in events)


def test_progress_line():
    # The first step is reported (its compile time ends there) without an ETA; later ETAs
    # are measured from it.
    out = io.StringIO()
    p = metrics.Progress(10, every=5, stream=out)
    for step in range(1, 6):
        p.update(step, loss=0.5, tokens=100, extra={"reward": 0.25})
    first, fifth = out.getvalue().strip().splitlines()
    assert first.startswith("step 1/10  loss 0.5000  reward 0.25") and first.endswith("eta -")
    assert fifth.startswith("step 5/10  loss 0.5000  reward 0.25") and "tok/s" in fifth
    assert fifth.endswith("s") and "eta -" not in fifth
    assert json.dumps(metrics._scalar(3)) == "3"


def test_rows_are_strict_json_and_tensorboard_tags_are_prefixed(tmp_path):
    # NaN / inf become null (a strict JSON parser reads every row); TensorBoard and W&B see
    # train/... and eval/... tags.
    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    logged = []

    class Fake:
        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    w._tb = Fake()
    w.write(1, {"loss": float("nan"), "reward": float("inf"), "eval/loss": 0.5, "lr": 1e-3})
    w.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    strict = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert strict == {"step": 1, "loss": None, "reward": None, "eval/loss": 0.5, "lr": 1e-3}
    assert logged == [("eval/loss", 0.5, 1), ("train/lr", 1e-3, 1)]


def test_wandb_logging_is_optional_and_lazy(tmp_path, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or run)
    run = types.SimpleNamespace(log=lambda row, step: calls.append(("log", row, step)),
                                finish=lambda: calls.append(("finish",)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False,
                              wandb=dict(project="p", name="n", config={"a": 1}))
    w.write(3, {"loss": 0.5})
    w.close()
    init = calls[0][1]
    assert (init["project"], init["name"], init["config"], init["resume"]) == (
        "p", "n", {"a": 1}, "allow")
    assert calls[1:] == [("log", {"train/loss": 0.5}, 3), ("finish",)]
