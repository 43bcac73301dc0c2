"""The fingerprinted caches: what the fingerprint sees."""

import numpy as np

from alignax.train import caches


def test_ref_cache_fingerprint_sees_data_weights_and_settings():
    rows = [{"prompt": [1, 2], "chosen": [3], "rejected": [4]}]
    params = {"w": np.ones((2, 2), np.float32)}
    key = caches.fingerprint(rows, params)
    assert key == caches.fingerprint(rows, {"w": np.ones((2, 2), np.float32)})
    assert key != caches.fingerprint([dict(rows[0], rejected=[5])], params)
    assert key != caches.fingerprint(rows, {"w": np.full((2, 2), 1.5, np.float32)})
    assert key != caches.fingerprint(rows, params, extra={"ld_alpha": 0.5})
    # Non-pair rows (SFT, KTO) are fingerprinted by their own token ids.
    sft = [{"prompt": [1, 2], "completion": [3]}]
    assert caches.fingerprint(sft, params) != caches.fingerprint([dict(sft[0], completion=[4])],
                                                                 params)


def _rows(n):
    """Tokenised pair rows whose prompts carry their index."""
    return [{"prompt": [i + 1, i + 2], "chosen": [3, 4], "rejected": [5], "objective": 0}
            for i in range(n)]


def test_cached_arrays_fingerprint_and_reuse(tmp_path):
    # Computed once, reused by an identical call; a new file when the weights, the rows or a
    # setting change.
    rows = _rows(5)
    calls = []

    def fn(params, batch):
        calls.append(1)
        return {"x": batch["input_ids"][:, :, :2] * params["w"][0]}

    params = {"w": np.ones(2, np.float32)}
    kw = dict(name="teacher_topk", cache_dir=str(tmp_path), pad_id=256, buckets=(16,),
              batch_size=2, log=lambda *_: None)
    a = caches.cached_arrays(fn, params, rows, extra={"top_k": 4}, **kw)
    assert len(calls) == 3 and a["x"].shape == (5, 2, 2)  # 5 rows in batches of 2 (+1 pad)
    np.testing.assert_array_equal(a["x"][:, 0], [r["prompt"][:2] for r in rows])
    b = caches.cached_arrays(fn, params, rows, extra={"top_k": 4}, **kw)
    assert len(calls) == 3 and np.array_equal(a["x"], b["x"])
    caches.cached_arrays(fn, {"w": np.full(2, 2.0, np.float32)}, rows, extra={"top_k": 4},
                             **kw)
    caches.cached_arrays(fn, params, rows[:4] + [dict(rows[4], rejected=[7])],
                         extra={"top_k": 4}, **kw)
    caches.cached_arrays(fn, params, rows, extra={"top_k": 8}, **kw)
    assert len(calls) == 3 + 3 * 3
    assert len(list(tmp_path.iterdir())) == 4
