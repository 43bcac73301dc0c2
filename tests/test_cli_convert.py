"""`alignax convert`: a checkpoint step of any trainer's workdir -> an HF export."""

import glob
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from alignax import checkpoint, cli, sharding
from alignax.models import from_hf
from alignax.train.context import build_model
from alignax.train.optim import optimizer_from_config
from alignax.train.state import abstract_train_state
from tests.runs import load, train

QUICK = ("--config.train.eval_every=0", "--config.checkpoint.every_steps=2",
         "--config.checkpoint.keep=3")


def _cfg(name, *overrides):
    return load(name, *QUICK, *overrides)


def _tensors(path):
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "**", "*.safetensors"), recursive=True)):
        out.update({f"{os.path.relpath(f, path)}:{k}": v for k, v in load_file(f).items()})
    return out


def _same_export(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb) and ta
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def test_sft_any_step(tmp_path, capsys):
    cfg = _cfg("sft")
    work = str(tmp_path / "run")
    train(cfg, work)
    assert cli.main(["convert", "--workdir", work, "--out", str(tmp_path / "last")]) == 0
    _same_export(str(tmp_path / "last"), os.path.join(work, "hf"))  # latest = final export
    assert cli.main(["convert", "--workdir", work, "--step", "2",
                     "--out", str(tmp_path / "s2")]) == 0
    # Step 2 as the trainer itself restores it (its own abstract state on its mesh).
    graphdef, params0 = nnx.split(build_model(cfg.model, seed=cfg.train.seed))
    tx = optimizer_from_config(dict(cfg.optim), total_steps=cfg.train.steps)
    target, _ = abstract_train_state(lambda: params0, tx, mesh=sharding.make_mesh(dict(cfg.mesh)))
    manager = checkpoint.checkpoint_manager(os.path.join(work, "checkpoints"))
    want = checkpoint.restore_checkpoint(manager, target=target, step=2).state.params
    got = nnx.split(from_hf(str(tmp_path / "s2")))[1]
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    head = "model.safetensors:lm_head.weight"
    assert not np.array_equal(_tensors(str(tmp_path / "s2"))[head],
                              _tensors(str(tmp_path / "last"))[head])
    capsys.readouterr()
    assert cli.main(["convert", "--workdir", work, "--step", "3", "--out", "x"]) == 2
    assert "holds steps [1, 2, 4]" in capsys.readouterr().err
    assert cli.main(["convert", "--workdir", str(tmp_path), "--out", "x"]) == 2
    assert "not a train workdir" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reward_model", "mah_dpo", "grpo"])
def test_latest_step_equals_final_export(name, tmp_path):
    work = str(tmp_path / "run")
    train(_cfg(name), work)
    assert cli.main(["convert", "--workdir", work, "--out", str(tmp_path / "out")]) == 0
    _same_export(str(tmp_path / "out"), os.path.join(work, "hf"))
