"""Data pipeline: sources, formats, errors that name file/line/field, batches, resume, task."""

import json

import numpy as np
import pytest

from alignax import data
from alignax.data import arithmetic


class CharTokenizer:
    """One id per character (ord + 3); pad 0, eos 1. Enough to check the layouts by hand."""

    pad_id, eos_id = 0, 1

    def encode(self, text, *, add_special_tokens=True):
        del add_special_tokens  # no special tokens to add
        return [ord(ch) + 3 for ch in text]


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _load(path, **kw):
    policy = data.ErrorPolicy(kw.pop("on_error", "raise"))
    return data.parse_records(data.read_records(path, policy=policy), policy=policy, **kw), policy


def test_pairs_layout(tmp_path):
    path = _write(tmp_path, "p.jsonl", [json.dumps({"prompt": "ab", "chosen": "c",
                                                    "rejected": "de"})])
    examples, _ = _load(path)
    assert examples[0] == data.Pair("ab", "c", "de", None, (path, 1))
    rows = data.tokenize_examples(examples, CharTokenizer(), data.Limits(8, 8))
    batch = data.collate(rows, pad_id=0, buckets=(4, 8))
    # "ab"+"c"+eos = 4 tokens, "ab"+"de"+eos = 5 -> bucket 8.
    assert batch["input_ids"].shape == (1, 2, 8)
    np.testing.assert_array_equal(batch["input_ids"][0, 0], [100, 101, 102, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["completion_mask"][0, 0], [0, 0, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["completion_mask"][0, 1], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch["attention_mask"][0, 1], [1, 1, 1, 1, 1, 0, 0, 0])
    assert batch["objective"].tolist() == [-1]


def test_truncation_keeps_prompt_end_and_completion_start():
    rows = data.tokenize_examples([data.SFT("abcdef", "xyz")], CharTokenizer(),
                                  data.Limits(max_prompt_length=2, max_completion_length=2))
    assert rows[0]["prompt"] == [ord("e") + 3, ord("f") + 3]
    assert rows[0]["completion"] == [ord("x") + 3, ord("y") + 3]  # eos cut off with the tail


def test_hh_dialogue_prompt_extraction(tmp_path):
    rec = {"chosen": "\n\nHuman: hi\n\nAssistant: hello!",
           "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    examples, _ = _load(_write(tmp_path, "hh.jsonl", [json.dumps(rec)]))
    assert examples[0].prompt == "\n\nHuman: hi\n\nAssistant:"
    assert (examples[0].chosen, examples[0].rejected) == (" hello!", " go away")


def test_chat_messages_rendered():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    ex = data.parse_records([(("m", 1), {"messages": msgs})])[0]
    rows = data.tokenize_examples([ex], CharTokenizer(), data.Limits(64, 64))
    text = "".join(chr(i - 3) for i in rows[0]["prompt"])
    assert text == "<|user|>\nhi\n<|assistant|>\n"
    assert "".join(chr(i - 3) for i in rows[0]["completion"][:-1]) == "yo\n"


def test_unpaired_kl_rows_cycle_completions():
    rows = data.tokenize_examples([data.Unpaired("a", "x", True), data.Unpaired("b", "yy", False)],
                                  CharTokenizer(), data.Limits(4, 4))
    batch = data.collate(rows, pad_id=0, buckets=(8,))
    assert batch["label"].tolist() == [True, False]
    # Row 0's KL sequence is prompt "a" + completion of row 1 ("yy" + eos).
    np.testing.assert_array_equal(batch["kl_input_ids"][0][:4], [100, 124, 124, 1])
    np.testing.assert_array_equal(batch["kl_completion_mask"][0][:4], [0, 1, 1, 1])


def test_unpaired_kl_rows_pair_across_the_global_batch_on_several_processes():
    # Two processes, each with half of the global batch: each pairs its first prompt with the
    # global row before its slice, so the KL rows are those one process would build.
    rows = data.tokenize_examples([data.Unpaired(p, c, i % 2 == 0) for i, (p, c) in
                                   enumerate(zip("abcd", ["x", "yy", "z", "ww"]))],
                                  CharTokenizer(), data.Limits(4, 4))
    kw = dict(global_batch_size=4, pad_id=0, max_length=16, seed=0)
    whole = next(data.BatchIterator(rows, **kw))
    halves = [next(data.BatchIterator(rows, process_index=i, process_count=2, **kw))
              for i in range(2)]
    for key in ("kl_input_ids", "kl_attention_mask", "kl_completion_mask", "input_ids"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "chosen": "b"', "p.jsonl:2: invalid JSON"),
    ('{"prompt": "a", "chosen": "b"}', "p.jsonl:2: field 'rejected': missing field"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}',
     "p.jsonl:2: field 'chosen': expected a string or a list of chat messages, got int"),
    ('{"prompt": "a", "chosen": "  ", "rejected": "c"}', "p.jsonl:2: field 'chosen': empty text"),
    ('[1, 2]', "p.jsonl:2: expected a JSON object, got list"),
])
def test_malformed_rows_name_file_line_field(tmp_path, line, message):
    good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"})
    path = _write(tmp_path, "p.jsonl", [good, line, good])
    with pytest.raises(data.DataError) as err:
        _load(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    # on_error="skip" drops exactly the bad row and reports it.
    examples, policy = _load(path, on_error="skip")
    assert len(examples) == 2 and policy.num_skipped == 1
    assert message in policy.summary()


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.read_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(data.DataError, match="unknown data file type 'x.csv'"):
        data.read_records(str(tmp_path / "x.csv"))
    with pytest.raises(data.DataError, match="no data files"):
        data.read_records(str(tmp_path))  # a directory holding no .jsonl / .json / .parquet


def test_gzip_json_array_and_shard_directory(tmp_path):
    # The same records as .jsonl.gz, as one JSON array (.json), and as a directory of shards.
    import gzip

    recs = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "0"} for i in range(5)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs[:3]))
    (tmp_path / "b.json").write_text(json.dumps(recs[3:]))
    got = data.read_records(str(tmp_path / "a.jsonl.gz"))
    assert [r for _, r in got] == recs[:3] and got[2][0] == (str(tmp_path / "a.jsonl.gz"), 3)
    got = data.read_records(str(tmp_path / "b.json"))
    assert [r for _, r in got] == recs[3:] and got[1][0] == (str(tmp_path / "b.json"), 2)
    assert [r for _, r in data.read_records(str(tmp_path))] == recs  # shards in name order


def test_conversational_pairs_share_the_prompt():
    user = {"role": "user", "content": "2+3?"}
    rec = {"chosen": [user, {"role": "assistant", "content": "5"}],
           "rejected": [user, {"role": "assistant", "content": "6"}]}
    (pair,) = data.parse_records([(("f", 1), rec)])
    assert pair.prompt == [user] and pair.chosen[0]["content"] == "5"
    bad = dict(rec, rejected=[{"role": "user", "content": "other"}, rec["rejected"][1]])
    with pytest.raises(data.DataError, match=r"f:1: field 'rejected': chosen and rejected "
                                             r"conversations differ"):
        data.parse_records([(("f", 1), bad)])


def test_skip_summary_keeps_whole_reasons():
    # A reason with a colon in it ("'Assistant:' turn") is kept whole, with its field.
    policy = data.ErrorPolicy("skip")
    rec = {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: x"}
    assert data.parse_records([(("f", 1), rec), (("f", 2), rec)], policy=policy) == []
    assert policy.skipped == {"chosen: empty completion after the last 'Assistant:' turn": 2}


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "d.parquet")
    pq.write_table(pa.table({"prompt": ["1+1="], "completion": ["2"]}), path)
    examples, _ = _load(path)
    assert examples == [data.SFT("1+1=", "2", (path, 1))]


def test_objective_names_and_indices():
    recs = [(("f", 1), {"prompt": "", "chosen": "a", "rejected": "b", "objective": "brevity"}),
            (("f", 2), {"prompt": "", "chosen": "a", "rejected": "b", "objective": 0})]
    out = data.parse_records(recs, objectives=["correct", "brevity"])
    assert [e.objective for e in out] == [1, 0]
    with pytest.raises(data.DataError, match="f:1: field 'objective': unknown objective"):
        data.parse_records(recs[:1], objectives=["correct"])


def _rows(n):
    return data.tokenize_examples(arithmetic.preference_pairs(n, seed=0), CharTokenizer(),
                                  data.Limits(8, 8))


def test_iterator_is_deterministic_and_resumes():
    a = data.BatchIterator(_rows(10), global_batch_size=4, pad_id=0, max_length=16, seed=3)
    full = [next(a)["input_ids"] for _ in range(5)]  # crosses an epoch boundary (2 per epoch)
    b = data.BatchIterator(_rows(10), global_batch_size=4, pad_id=0, max_length=16, seed=3)
    first = [next(b)["input_ids"] for _ in range(3)]
    state = json.loads(json.dumps(b.state_dict()))
    c = data.BatchIterator(_rows(10), global_batch_size=4, pad_id=0, max_length=16, seed=3)
    c.load_state_dict(state)
    rest = [next(c)["input_ids"] for _ in range(2)]
    for x, y in zip(full, first + rest):
        np.testing.assert_array_equal(x, y)
    # Another seed gives another order.
    d = data.BatchIterator(_rows(10), global_batch_size=4, pad_id=0, max_length=16, seed=4)
    assert any(not np.array_equal(x, next(d)["input_ids"]) for x in full[:2])


def test_process_slices_cover_the_global_batch():
    rows = _rows(8)
    whole = next(data.BatchIterator(rows, global_batch_size=4, pad_id=0, max_length=16))
    parts = [next(data.BatchIterator(rows, global_batch_size=4, pad_id=0, max_length=16,
                                     process_index=i, process_count=2)) for i in range(2)]
    np.testing.assert_array_equal(whole["input_ids"],
                                  np.concatenate([p["input_ids"] for p in parts]))
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        data.BatchIterator(rows, global_batch_size=4, pad_id=0, max_length=16, process_count=3)


def test_synthetic_task_answers_and_noise(tmp_path):
    probs = arithmetic.problems(50, seed=1)
    assert all(arithmetic.is_correct(p, a) for p, a in probs)
    assert arithmetic.accuracy([p for p, _ in probs], [a + "\n" for _, a in probs]) == 1.0
    noisy = arithmetic.sft_examples(400, seed=1, error_rate=0.25)
    wrong = np.mean([not arithmetic.is_correct(e.prompt, e.completion) for e in noisy])
    assert 0.18 < wrong < 0.32  # binomial(400, 0.25): 4.5 sigma band
    pairs = arithmetic.preference_pairs(20, seed=2)
    assert all(arithmetic.is_correct(p.prompt, p.chosen) and
               not arithmetic.is_correct(p.prompt, p.rejected) for p in pairs)
    path = str(tmp_path / "pairs.jsonl")
    arithmetic.write_jsonl(pairs, path)
    back, _ = _load(path)
    assert [(e.prompt, e.chosen, e.rejected) for e in back] == [
        (p.prompt, p.chosen, p.rejected) for p in pairs]


def test_batch_arrays_align_with_rows():
    # Each batch's cached arrays belong to the rows collated into it, across epochs and after
    # a resume from a state dict; rows carry their own index in the prompt.
    rows = [{"prompt": [i], "chosen": [1], "rejected": [2], "objective": 0} for i in range(10)]
    arrays = {"teacher_rest": np.arange(10, dtype=np.float32)}
    kw = dict(global_batch_size=4, pad_id=256, max_length=4, seed=3)
    it = data.BatchIterator(rows, arrays=arrays, **kw)
    for step in range(6):
        if step == 3:
            state = it.state_dict()
            it = data.BatchIterator(rows, arrays=arrays, **kw)
            it.load_state_dict(state)
        b = next(it)
        np.testing.assert_array_equal(b["teacher_rest"], b["input_ids"][:, 0, 0])
