"""`PackedBatchIterator`: the same examples as `BatchIterator`, every row once per epoch,
segments inside rows, positions restarting, resume, arrays following their rows, micro-batch
groups and per-process slices."""

import numpy as np
import pytest

from alignax import data
from alignax.data.packing import first_fit, round_rows


def _rows(kind: str, n: int = 48, seed: int = 0) -> list[dict]:
    """Distinct rows (the first completion token is the row's index) of varied lengths, some
    prompts empty."""
    rng = np.random.default_rng(seed)
    tok = lambda k: rng.integers(3, 250, k).tolist()
    rows = []
    for i in range(n):
        prompt = tok(int(rng.integers(0, 9)))
        if kind == "sft":
            rows.append({"prompt": prompt, "completion": [i] + tok(int(rng.integers(0, 8)))})
        else:
            rows.append({"prompt": prompt, "chosen": [i] + tok(int(rng.integers(0, 8))),
                         "rejected": tok(int(rng.integers(1, 9))), "objective": i % 3 - 1})
    return rows


KW = dict(global_batch_size=8, pad_id=0, max_length=17, seed=5)


def _ids(rows, examples):
    key = "chosen" if "chosen" in rows[0] else "completion"
    return [ex[key][0] for ex in examples]


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_batches_hold_the_unpacked_examples_once_per_epoch(kind):
    rows = _rows(kind)
    it = data.PackedBatchIterator(rows, pack_width=48, **KW)
    assert it.steps_per_epoch == 6
    for epoch in range(2):
        seen = []
        for step in range(it.steps_per_epoch):
            batch = next(it)
            examples = data.unpack(batch)
            order = it._order(epoch)[step * 8:(step + 1) * 8]
            # The same examples, in the same order, as BatchIterator's batch at this position.
            assert examples == [{k: v for k, v in rows[i].items() if k != "objective"}
                                for i in order]
            seen += _ids(rows, examples)
            if kind == "pairs":
                assert batch["objective"].tolist() == [rows[i]["objective"] for i in order]
        assert sorted(seen) == list(range(len(rows)))
    assert batch["input_ids"].shape[0] < 8  # packing did pack


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_layout_invariants(kind):
    rows = _rows(kind, seed=1)
    it = data.PackedBatchIterator(rows, pack_width=40, **KW)
    per = 2 if kind == "pairs" else 1
    for _ in range(it.steps_per_epoch):
        b = next(it)
        r, w = b["input_ids"].shape
        assert w == 40 and b["slot_example"].shape == (r, it.slots)
        assert sorted(b["slot_example"][b["slot_example"] >= 0].tolist()) == list(range(8))
        np.testing.assert_array_equal(b["attention_mask"], b["segment_ids"] > 0)
        assert np.all(b["input_ids"][b["attention_mask"] == 0] == 0)
        assert np.all(b["completion_mask"] <= b["attention_mask"])
        for row in range(r):
            seg, pos = b["segment_ids"][row], b["positions"][row]
            filled = int(np.sum(b["slot_example"][row] >= 0))
            # Segments 1..per*filled, each contiguous, in order, then padding to the end.
            real = seg[seg > 0]
            assert np.all(np.diff(real) >= 0) and np.all(seg[len(real):] == 0)
            assert sorted(set(real.tolist())) == list(range(1, per * filled + 1))
            for s in range(1, per * filled + 1):
                where = np.flatnonzero(seg == s)
                assert np.array_equal(where, np.arange(where[0], where[-1] + 1))
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # restart
                comp = b["completion_mask"][row][where]
                assert comp[-1] == 1 and np.all(np.diff(comp) >= 0)  # prompt, then completion


def test_resume_and_determinism():
    rows = _rows("pairs")
    arrays = {"ref_logps": np.arange(2 * len(rows), dtype=np.float32).reshape(-1, 2)}
    make = lambda **kw: data.PackedBatchIterator(rows, pack_width=48, arrays=arrays,
                                                 **{**KW, **kw})
    a = make()
    for _ in range(4):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(5)]  # crosses into the next epoch
    b = make()
    b.load_state_dict(state)
    again = [next(b) for _ in range(5)]
    fresh = make()
    first = [next(fresh) for _ in range(9)][4:]
    for x, y, z in zip(expected, again, first):
        assert x.keys() == y.keys() == z.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
            np.testing.assert_array_equal(x[k], z[k])
    other = next(make(seed=6))
    assert data.unpack(other) != data.unpack(next(make()))
    with pytest.raises(ValueError, match="seed"):
        make(seed=7).load_state_dict(state)


def test_arrays_follow_their_rows():
    rows = _rows("pairs")
    arrays = {"ref_logps": np.stack([np.arange(len(rows)), -np.arange(len(rows))], 1)}
    it = data.PackedBatchIterator(rows, pack_width=48, arrays=arrays, **KW)
    for _ in range(3):
        b = next(it)
        ids = _ids(rows, data.unpack(b))
        assert b["ref_logps"].shape == (8, 2)
        np.testing.assert_array_equal(b["ref_logps"][:, 0], ids)
        np.testing.assert_array_equal(b["ref_logps"][:, 1], -np.asarray(ids))


def test_microbatch_groups_and_data_parallel_rows():
    rows = _rows("sft")
    it = data.PackedBatchIterator(rows, pack_width=48, num_microbatches=2, data_parallel=4,
                                  **KW)
    for _ in range(it.steps_per_epoch):
        b = next(it)
        r = b["input_ids"].shape[0]
        assert r % (2 * 4) == 0
        # Micro-batch m (rows m, m + M, ...) holds batch positions m, m + M, ...: the unpacked
        # micro-batch's examples.
        for row, slots in enumerate(b["slot_example"]):
            assert all(e % 2 == row % 2 for e in slots if e >= 0)


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_process_slices_agree_with_one_process(kind):
    rows = _rows(kind)
    arrays = {"x": np.arange(len(rows))}
    whole = data.PackedBatchIterator(rows, pack_width=48, arrays=arrays, **KW)
    parts = [data.PackedBatchIterator(rows, pack_width=48, arrays=arrays, process_index=i,
                                      process_count=2, data_parallel=2, **KW) for i in range(2)]
    for _ in range(3):
        w, ps = next(whole), [next(p) for p in parts]
        assert ps[0]["input_ids"].shape == ps[1]["input_ids"].shape  # all processes agree
        np.testing.assert_array_equal(np.concatenate([p["example_index"] for p in ps]),
                                      np.arange(8))
        assert data.unpack(ps[0]) + data.unpack(ps[1]) == data.unpack(w)
        np.testing.assert_array_equal(np.concatenate([p["x"] for p in ps]), w["x"])


def test_errors_and_defaults():
    rows = _rows("pairs")
    with pytest.raises(ValueError, match="pack_width=20 is shorter"):
        data.PackedBatchIterator(rows, pack_width=20, **KW)
    it = data.PackedBatchIterator(rows, **KW)
    assert it.width == 2 * KW["max_length"]  # a pair's two sequences share a row
    assert data.PackedBatchIterator(_rows("sft"), **KW).width == KW["max_length"]
    kto = [{"prompt": [1], "completion": [2], "label": True}] * 8
    with pytest.raises(ValueError, match="SFT rows and preference pairs"):
        data.PackedBatchIterator(kto, **KW)


def test_first_fit_and_row_ladder():
    assert first_fit([5, 4, 3, 2, 6], 8).tolist() == [0, 1, 0, 1, 2]
    assert [round_rows(n, 1, 100) for n in (1, 7, 8, 9, 11, 13, 17, 33)] == [
        1, 7, 8, 10, 12, 14, 20, 40]
    assert round_rows(3, 8, 100) == 8 and round_rows(9, 2, 100) == 10
    assert round_rows(17, 1, 18) == 18  # never more rows than examples
