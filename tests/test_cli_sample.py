"""`alignax sample`: plain HF exports and MAH-DPO exports with --head-weights."""

import json

import jax
import numpy as np
import pytest

from alignax import cli, sample_cli
from alignax.models import (
    ByteTokenizer,
    MultiHeadLM,
    init_model,
    save_multihead,
    tiny_config,
    to_hf,
)
from alignax.sampling import decode_completions, generate

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = init_model(tiny_config("llama", hidden_size=32, intermediate_size=64, num_heads=2,
                                  num_kv_heads=1), seed=0)
    model = MultiHeadLM.from_base(base, 2, noise_std=0.3, seed=1)
    root = tmp_path_factory.mktemp("exports")
    plain, multi = str(root / "plain"), str(root / "work" / "hf")
    to_hf(base, plain)
    save_multihead(model, multi, objectives=["correct", "round"], weights=[3.0, 1.0])
    return plain, str(root / "work"), model


def _run(capsys, *args):
    code = cli.main(["sample", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(x) for x in out.splitlines()], err


def test_multihead_export_with_head_weights(exports, capsys, tmp_path):
    _, workdir, model = exports
    prompts = tmp_path / "p.txt"
    prompts.write_text("12+7=\n\n3+4=\n")
    args = ["--model", workdir, "--prompts-file", str(prompts), "--head-weights", "0,1",
            "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95", "--num-samples", "2",
            "--max-new-tokens", "5", "--seed", "4"]
    code, rows, err = _run(capsys, *args)
    assert code == 0, err
    assert [(r["prompt"], r["sample"]) for r in rows] == [("12+7=", 0), ("12+7=", 1),
                                                          ("3+4=", 0), ("3+4=", 1)]
    assert rows[0]["head_weights"] == [0.0, 1.0]
    # The same draws as the library call on head 1.
    out = generate(model, [TOK.encode("12+7="), TOK.encode("3+4=")], head_weights=[0, 1],
                   max_new_tokens=5, eos_id=TOK.eos_id, pad_id=TOK.pad_id, temperature=0.8,
                   top_k=50, top_p=0.95, num_samples=2, seed=4)
    assert [r["completion"] for r in rows] == decode_completions(TOK, out.tokens, out.mask)
    # Deterministic under --seed; other weights give other samples.
    assert _run(capsys, *args)[1] == rows
    other = _run(capsys, *args[:5], "1,0", *args[6:])[1]
    assert [r["completion"] for r in other] != [r["completion"] for r in rows]
    # No --head-weights: the export weights (3:1 -> 0.75, 0.25).
    code, rows, _ = _run(capsys, "--model", workdir, "--prompt", "1+1=", "--max-new-tokens",
                         "2")
    assert code == 0 and rows[0]["head_weights"] == [0.75, 0.25]


def test_plain_export_greedy_matches_model(exports, capsys):
    plain, _, _ = exports
    code, rows, err = _run(capsys, "--model", plain, "--prompt", "5+5=", "--temperature", "0",
                           "--max-new-tokens", "4")
    assert code == 0, err
    assert len(rows) == 1 and "head_weights" not in rows[0]
    from alignax.models import from_hf

    model = from_hf(plain)
    prompt = TOK.encode("5+5=")
    forward = jax.jit(lambda ids, mask: model(ids, mask))
    seq = list(prompt)
    for _ in range(4):  # greedy by hand: full forwards at one right-padded width
        ids, mask = np.full((1, 12), TOK.pad_id, np.int32), np.zeros((1, 12), np.int32)
        ids[0, :len(seq)], mask[0, :len(seq)] = seq, 1
        nxt = int(np.argmax(forward(ids, mask)[0, len(seq) - 1]))
        if nxt == TOK.eos_id:
            break
        seq.append(nxt)
    assert rows[0]["completion"] == TOK.decode(seq[len(prompt):])
    # Through the continuous-batching engine (greedy: the same completion).
    code, again, err = _run(capsys, "--model", plain, "--prompt", "5+5=", "--temperature",
                            "0", "--max-new-tokens", "4", "--slots", "2")
    assert code == 0, err
    assert again == rows


@pytest.mark.parametrize("extra, message", [
    (["--head-weights", "1,2,3"], "--head-weights for 2 heads (correct, round): expected 2"),
    (["--head-weights", "a,b"], "comma-separated numbers"),
    (["--head-weights", "0,0"], "not all 0"),
    (["--top-p", "0"], "--top-p: out of range"),
    (["--slots", "4", "--best-of", "2"], "--slots: continuous batching samples plain"),
])
def test_bad_arguments_exit_2(exports, capsys, extra, message):
    _, workdir, _ = exports
    code, rows, err = _run(capsys, "--model", workdir, "--prompt", "1+1=", *extra)
    assert code == 2 and not rows and message in err and err.startswith("alignax: error:")


def test_head_weights_on_plain_model_and_missing_prompts(exports, capsys):
    plain, _, _ = exports
    code, _, err = _run(capsys, "--model", plain, "--prompt", "x", "--head-weights", "1,1")
    assert code == 2 and "single-head model" in err
    code, _, err = _run(capsys, "--model", plain)
    assert code == 2 and "no prompts" in err


def test_prompts_file_jsonl_and_errors(exports, capsys, tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "12+7="}\n\n{"prompt": "3+4=", "x": 1}\n')
    assert sample_cli._read_prompts(str(good)) == ["12+7=", "3+4="]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{"text": "2+2="}\n')
    code, _, err = _run(capsys, "--model", exports[0], "--prompts-file", str(bad))
    assert code == 2 and f"{bad}:2: field 'prompt'" in err
    code, _, err = _run(capsys, "--model", exports[0], "--prompts-file", str(tmp_path / "no"))
    assert code == 2 and "no such file" in err
