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
    out = io.StringIO()
    p = metrics.Progress(10, every=5, stream=out)
    for step in range(1, 6):
        p.update(step, loss=0.5, tokens=100)
    line = out.getvalue().strip()
    assert line.startswith("step 5/10  loss 0.5000") and "tok/s" in line
    assert json.dumps(metrics._scalar(3)) == "3"
