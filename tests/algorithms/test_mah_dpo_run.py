"""MAH-DPO trainer end to end: the smoke config through the engine, per-objective metrics,
export + reload for sampling, resume equality, data errors."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from alignax import algorithms, config, data, metrics
from alignax.models import ByteTokenizer, from_hf, load_multihead
from alignax.sampling import left_pad, sample_tokens
from tests.runs import load, train


def _cfg(*overrides, variant="smoke"):
    return load("mah_dpo", *overrides, variant=variant)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mah"))
    return workdir, train(_cfg(), workdir)


def test_default_and_single_configs_load():
    assert _cfg(variant="default").heads.num_heads == 0
    assert _cfg(variant="single").heads.num_heads == 1


@pytest.mark.slow
def test_smoke_run_writes_per_head_metrics(smoke):
    workdir, summary = smoke
    rows = metrics.read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    last = rows[-1]
    for name in ("correct", "round"):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen",
                    "examples"):
            assert np.isfinite(last[f"{name}/{key}"]), (name, key)
        assert last[f"{name}/examples"] == 4  # balanced: B/2 pairs of each objective
        assert last[f"{name}/examples_seen"] == 16  # 4 steps x 4 pairs
        for head in ("correct_head", "round_head", "uniform"):
            assert 0 <= last[f"eval/{head}/{name}"] <= 1
    # The batch loss is the mean of the two heads' losses.
    np.testing.assert_allclose(last["loss"], (last["correct/loss"] + last["round/loss"]) / 2,
                               rtol=1e-5)
    assert {"rewards/margins", "logps/chosen", "grad_norm"} <= set(last)
    assert summary["num_heads"] == 2 and summary["objectives"] == ["correct", "round"]
    assert len(summary["sweep"]["weights"]) == 3 and len(summary["sweep"]["round"]) == 3
    for f in ("config.json", "summary.json", "checkpoints", "hf/config.json",
              "hf/model.safetensors", "hf/heads/heads.safetensors", "hf/heads/heads.json"):
        assert os.path.exists(os.path.join(workdir, f)), f


def test_export_reloads_for_sampling(smoke):
    workdir, summary = smoke
    export = summary["hf_export"]
    model, names = load_multihead(export)
    assert names == ["correct", "round"] and model.num_heads == 2
    heads = np.asarray(model.heads.weight[...])
    assert not np.array_equal(heads[0], heads[1])
    # The plain HF model is the uniform mixture (the export default).
    plain = from_hf(export)
    np.testing.assert_allclose(plain.lm_head[...], heads.mean(0), rtol=1e-6, atol=1e-7)
    # Mixed sampling from the reloaded heads = sampling the plain model at the same weights.
    tok = ByteTokenizer()
    ids, mask = left_pad([tok.encode("12+7="), tok.encode("3+4=")], tok.pad_id)
    kw = dict(num_samples=2, max_new_tokens=4, temperature=1.0, stop_ids=(tok.eos_id,),
              pad_id=tok.pad_id)
    key = jax.random.key(0)
    got = sample_tokens(*nnx.split(model), ids, mask, key, np.array([0.5, 0.5], np.float32),
                        **kw)
    want = sample_tokens(*nnx.split(plain), ids, mask, key, **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens)


@pytest.mark.slow
def test_resume_is_identical(smoke, tmp_path):
    # 2 steps, stop, rerun the same command: the same numbers as the smoke run's 4 straight
    # steps (evaluation, sweep and export do not touch the training state or the data order).
    quick = ("--config.train.eval_every=0", "--config.train.sweep_points=0",
             "--config.train.export_hf=False")
    resumed = str(tmp_path / "b")
    train(_cfg(*quick, "--config.train.steps=2"), resumed)
    train(_cfg(*quick, "--config.resume.allow_changes=True"), resumed)
    a, b = metrics.read_metrics(smoke[0]), metrics.read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "correct/loss", "round/loss", "round/examples_seen"):
        assert [r[key] for r in a] == [r[key] for r in b], key


def test_data_path_errors_name_file_line_field(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "1+1=", "chosen": "2", "rejected": "3"}
    path.write_text(json.dumps(dict(good, objective="correct")) + "\n"
                    + json.dumps(dict(good, objective="brevity")) + "\n")
    cfg = _cfg(f"--config.data.path={path}")
    with pytest.raises(data.DataError, match=rf"{path}:2: field 'objective': unknown objective "
                                          r"'brevity'"):
        train(cfg, str(tmp_path / "w"))
    path.write_text(json.dumps(dict(good, objective=0)) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(data.DataError, match=rf"{path}:2: field 'objective': every MAH-DPO pair"):
        train(cfg, str(tmp_path / "w"))
    with pytest.raises(config.ConfigError, match="config field 'heads.num_heads'"):
        train(_cfg("--config.heads.num_heads=3"), str(tmp_path / "w"))
    with pytest.raises(config.ConfigError, match="config field 'data.objectives'"):
        train(_cfg(f"--config.data.path={path}", "--config.data.objectives=()"),
                 str(tmp_path / "w"))


def test_pairs_from_a_file_with_vector_preferences(tmp_path):
    from alignax.algorithms.mah_dpo import _pairs
    from alignax.train.context import Context

    path = tmp_path / "pairs.jsonl"
    recs = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "10", "preferences": [1, -1]}
            for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = _cfg(f"--config.data.path={path}", "--config.data.eval_fraction=0.1")
    ctx = Context(algorithms.resolve_config(cfg), str(tmp_path), log=lambda *_: None)
    pairs, evals = _pairs(ctx, ["correct", "round"], data.ErrorPolicy())
    assert len(pairs) + len(evals) == 40 and len(evals) == 4  # 2 routed pairs per record
    routed = {(p.prompt, p.chosen, p.rejected, p.objective) for p in pairs + evals}
    assert {("0+1=", "1", "10", 0), ("0+1=", "10", "1", 1)} <= routed  # both orientations
    bad = _cfg()
    bad.heads.bogus = 1
    with pytest.raises(config.ConfigError, match=r"unknown config field 'heads.bogus'"):
        algorithms.resolve_config(bad)
    with pytest.raises(config.ConfigError, match="'train.sweep_points' is not used by "
                                                 "algorithm 'dpo'"):
        algorithms.resolve_config(load("dpo", "--config.train.sweep_points=3"))
