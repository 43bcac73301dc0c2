"""Multi-objective data: the two-objective task, vector preferences, routing errors, balanced
batches, and the jittable scorers (equal to the text scorers)."""

import json

import jax
import numpy as np
import pytest

from alignax import data
from alignax.data import arithmetic, multiobjective
from alignax.models import ByteTokenizer
from alignax.sampling import decode_completions

NAMES = ["correct", "round"]


def test_scorers_by_hand():
    assert arithmetic.answer_of("12+7=") == 19 and arithmetic.answer_of("3*4=") == 12
    assert [arithmetic.round_answer(v) for v in (17, 15, 14)] == [20, 20, 10]
    assert arithmetic.is_correct("12+7=", " 19") and not arithmetic.is_correct("12+7=", "20")
    assert arithmetic.is_round("12+7=", "20 apples") and not arithmetic.is_round("12+7=", "19")
    assert arithmetic.preference_vector("12+7=", "19", "20") == (1, -1)  # the conflict
    assert arithmetic.preference_vector("12+8=", "20", "21") == (1, 1)  # both agree
    assert arithmetic.preference_vector("12+7=", "19", "18") == (1, 0)  # roundness ties
    np.testing.assert_array_equal(arithmetic.score(["1+1="] * 3, ["2", "10", "x"]),
                                  [[1, 0], [0, 1], [0, 0]])


def test_vector_pair_expands_once_per_labelled_objective():
    pairs = multiobjective.expand_vector_pair("12+7=", "19", "20", (1, -1))
    assert [(p.chosen, p.rejected, p.objective) for p in pairs] == [("19", "20", 0),
                                                                    ("20", "19", 1)]
    assert multiobjective.expand_vector_pair("p", "a", "b", (0, 0)) == []


def test_task_pairs_are_labelled_by_the_scorers():
    pairs = arithmetic.multiobjective_pairs(200, seed=3)
    counts = np.bincount([p.objective for p in pairs], minlength=2)
    assert counts.min() > 100  # both objectives well represented
    for p in pairs:
        name = NAMES[p.objective]
        # Objective k strictly prefers chosen; the label is the scorer's, not a guess.
        score = arithmetic.SCORERS[name]
        assert score(p.prompt, p.chosen) and not score(p.prompt, p.rejected)
    # Conflicting comparisons exist: the same (prompt, a, b) appears with both orientations.
    keyed = {(p.prompt, p.chosen, p.rejected) for p in pairs}
    assert sum((p.prompt, p.rejected, p.chosen) in keyed for p in pairs) > 50
    assert arithmetic.multiobjective_pairs(200, seed=3) == pairs  # deterministic
    none = arithmetic.multiobjective_pairs(200, seed=3, conflict=0.0)
    assert all(arithmetic.is_correct(p.prompt, p.chosen) for p in none if p.objective == 0)
    assert len(none) < len(pairs)


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _parse(path, names=NAMES, policy=None):
    recs = multiobjective.expand_records(data.read_records(path), names, policy=policy)
    return data.parse_records(recs, objectives=names, policy=policy)


def test_expand_records_vector_preferences(tmp_path):
    path = _jsonl(tmp_path, [
        {"prompt": "p", "chosen": "a", "rejected": "b", "objective": "round"},
        {"prompt": "p", "chosen": "a", "rejected": "b", "objective": [0, "round"]},
        {"prompt": "p", "chosen": "a", "rejected": "b", "preferences": [1, -1]},
        {"prompt": "p", "chosen": "a", "rejected": "b", "preferences": [0, -1]},
        {"prompt": "p", "chosen": "a", "rejected": "b", "preferences": [0, 0]},
    ])
    got = [(ex.chosen, ex.rejected, ex.objective, ex.where[1]) for ex in _parse(path)]
    assert got == [("a", "b", 1, 1), ("a", "b", 0, 2), ("a", "b", 1, 2), ("a", "b", 0, 3),
                   ("b", "a", 1, 3), ("b", "a", 1, 4)]


@pytest.mark.parametrize("record, field, message", [
    ({"objective": "brevity"}, "objective", "unknown objective 'brevity'"),
    ({"objective": 2}, "objective", "out of range"),
    ({"objective": [0, "brevity"]}, "objective[1]", "unknown objective 'brevity'"),
    ({"objective": [0, 5]}, "objective[1]", "out of range"),
    ({"objective": [1, 1]}, "objective", "listed twice"),
    ({"preferences": [1, 2]}, "preferences", "-1 / 0 / 1"),
    ({"preferences": [1, 0, 1]}, "preferences", "3 preferences for 2 objectives"),
])
def test_bad_objective_names_file_line_and_field(tmp_path, record, field, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "objective": 0}
    path = _jsonl(tmp_path, [good, dict(good, **record)] if "objective" in record
                  else [good, {**{k: v for k, v in good.items() if k != "objective"},
                               **record}])
    with pytest.raises(data.DataError) as e:
        _parse(path)
    assert e.value.path == path and e.value.line == 2 and e.value.field == field
    assert message in str(e.value) and str(e.value).startswith(f"{path}:2: field '{field}'")
    policy = data.ErrorPolicy("skip")  # on_error=skip drops the bad row and counts it
    assert len(_parse(path, policy=policy)) == 1 and policy.num_skipped == 1


def _rows(counts):
    tok = ByteTokenizer()
    pairs = [data.Pair(f"{i}+{k}=", str(i + k), str(i + k + 1), objective=k)
             for k, n in enumerate(counts) for i in range(n)]
    return data.tokenize_examples(pairs, tok, data.Limits(8, 6))


def test_balanced_batches():
    rows = _rows([7, 13, 20])
    kw = dict(num_objectives=3, global_batch_size=6, pad_id=256, max_length=14, seed=1)
    it = data.BalancedBatchIterator(rows, **kw)
    assert it.steps_per_epoch == 3  # min(7, 13, 20) // 2
    seen = []
    for _ in range(it.steps_per_epoch):
        b = next(it)
        assert sorted(b["objective"].tolist()) == [0, 0, 1, 1, 2, 2]
        seen += [bytes(x) for x in b["input_ids"][:, 0]]
    assert len(set(seen)) == len(seen)  # no pair twice within an epoch
    # Resumable: a fresh iterator at the saved position yields the same next batches.
    state = it.state_dict()
    nxt = [next(it)["input_ids"] for _ in range(4)]
    again = data.BalancedBatchIterator(rows, **kw)
    again.load_state_dict(state)
    for want in nxt:
        np.testing.assert_array_equal(next(again)["input_ids"], want)
    # Shuffled within the batch (not objective-sorted blocks) over a few batches.
    orders = [next(again)["objective"].tolist() for _ in range(5)]
    assert any(o != sorted(o) for o in orders)
    with pytest.raises(ValueError, match="multiple of the 3 objectives"):
        data.BalancedBatchIterator(rows, **dict(kw, global_batch_size=8))
    with pytest.raises(ValueError, match=r"pairs per objective \[1, 13, 20\]"):
        data.BalancedBatchIterator(_rows([1, 13, 20]), **kw)


def test_token_scores_equal_text_scores():
    tok = ByteTokenizer()
    texts = ["19", " 20", "-3x", "  7 0", "120", "x19", "0", "", "19\n", "-10", "5-"]
    answers = [19, 19, -3, 7, 120, 19, 0, 0, 19, -10, 5]
    prompts = [f"{a}+0=" if a >= 0 else f"0-{-a}=" for a in answers]
    width = 6
    ids = np.full((len(texts), width), tok.pad_id, np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
        enc = tok.encode(t)[:width - 1] + [tok.eos_id]
        ids[i, :len(enc)], mask[i, :len(enc)] = enc, 1
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 260, (64, width)).astype(np.int32)
    rand[:, 0] = rng.choice([32, 45, 48, 49, 53], 64)  # leading ' ', '-', digits
    rmask = (rng.random((64, width)) < 0.9).astype(np.int32)
    ids, mask = np.concatenate([ids, rand]), np.concatenate([mask, rmask])
    answers = np.asarray(answers + rng.integers(-20, 60, 64).tolist(), np.int32)
    prompts = prompts + [f"{a}+0=" if a >= 0 else f"0-{-a}=" for a in answers[len(texts):]]
    got = np.asarray(jax.jit(arithmetic.token_scores)(ids, mask, answers))
    want = arithmetic.score(prompts, decode_completions(tok, ids, mask))
    np.testing.assert_array_equal(got, want)
    assert got[:, 0].sum() >= 4 and got[:, 1].sum() >= 4  # both outcomes occur
