"""TFDS array_record preference data: write, read back through tfds.data_source + grain."""

import pytest

from alignax import data
from alignax.data import arithmetic


def test_tfds_round_trip_and_training_records(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    from alignax.data import tfds

    pairs = arithmetic.preference_pairs(12, seed=0)
    records = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    tfds.write_tfds(records, name="arith_prefs", data_dir=str(tmp_path))
    path = f"tfds:arith_prefs/train@{tmp_path}"
    got = data.read_records(path)
    assert len(got) == 12
    as_set = lambda rs: {tuple(sorted(r.items())) for r in rs}
    assert as_set(r for _, r in got) == as_set(records)  # tfds stores in shuffled order
    examples = data.parse_records(got)
    assert all(isinstance(e, data.Pair) for e in examples)
    assert examples[0].where[0] == f"tfds:arith_prefs/train@{tmp_path}"
    with pytest.raises(data.DataError, match="cannot open TFDS dataset"):
        data.read_records(f"tfds:missing@{tmp_path}")
    with pytest.raises(data.DataError, match="expected tfds:NAME"):
        data.read_records("tfds:arith_prefs")
