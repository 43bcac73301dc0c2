"""alignax.checkpoint: reshard on restore, clear mismatch errors, atomic saves, exact resume."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alignax import checkpoint as ckpt
from alignax import sharding
from alignax.train import abstract_train_state, init_train_state
from tests.train import tiny_lm
from tests.train.resume_worker import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = os.path.join(ROOT, "tests", "train")


def _run_worker(name, *args, expect_kill=False):
    proc = subprocess.run([sys.executable, os.path.join(WORKERS, name), *map(str, args)],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          timeout=120)
    expected = -signal.SIGKILL if expect_kill else 0
    assert proc.returncode == expected, proc.stderr.decode()[-3000:]


def _state(mesh_axes, **model):
    mesh = sharding.make_mesh(mesh_axes)
    tx = tiny_lm.make_tx()
    return mesh, tx, init_train_state(tiny_lm.init_params(**model), tx, mesh=mesh, seed=3)[0]


def test_save_on_one_mesh_restore_on_another(tmp_path):
    _, tx, state = _state({"data": 8})
    manager = ckpt.checkpoint_manager(tmp_path, every_steps=5, keep=2)
    assert ckpt.save_checkpoint(manager, step=5, state=state, data_state={"position": 7},
                                config={"lr": 0.01})
    assert not ckpt.save_checkpoint(manager, step=6, state=state)  # not due: every 5 steps
    manager.wait_until_finished()

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    target, shardings = abstract_train_state(tiny_lm.init_params(), tx, mesh=mesh)
    restored = ckpt.restore_checkpoint(ckpt.checkpoint_manager(tmp_path), target=target)
    assert restored.step == 5
    assert restored.data_state == {"position": 7} and restored.config == {"lr": 0.01}
    for got, want, want_sharding in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state),
                                   jax.tree.leaves(shardings), strict=True):
        assert got.sharding == want_sharding  # the new mesh's layout ...
        np.testing.assert_array_equal(got, want)  # ... and the same bits
    assert restored.state.params["w_up"][...].sharding.spec == P(None, "fsdp", "tensor")


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    _, tx, state = _state({"data": 8})
    manager = ckpt.checkpoint_manager(tmp_path)
    ckpt.save_checkpoint(manager, step=1, state=state, force=True)
    manager.wait_until_finished()
    mesh = sharding.make_mesh({"data": 8})
    wider, _ = abstract_train_state(tiny_lm.init_params(mlp=32), tx, mesh=mesh)
    with pytest.raises(ValueError, match=r"params/w_up/value: \(2, 8, 16\) in the checkpoint "
                                         r"vs \(2, 8, 32\) in the model"):
        ckpt.restore_checkpoint(manager, target=wider)
    with_ref, _ = abstract_train_state(tiny_lm.init_params(), tx, mesh=mesh, reference="copy")
    with pytest.raises(ValueError, match=r"6 leaves missing from the checkpoint .*ref_params"):
        ckpt.restore_checkpoint(manager, target=with_ref)


def test_interrupted_save_is_never_the_latest(tmp_path):
    directory = tmp_path / "ckpt"
    _run_worker("interrupted_save_worker.py", directory, expect_kill=True)
    names = os.listdir(directory)
    assert "1" in names and "2" not in names
    assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names
    manager = ckpt.checkpoint_manager(directory, every_steps=1)
    assert manager.latest_step() == 1 and list(manager.all_steps()) == [1]
    ckpt.save_checkpoint(manager, step=2, state={"w": np.zeros((4,), np.float32)})
    manager.wait_until_finished()
    assert manager.latest_step() == 2  # the leftover tmp directory does not block step 2


def test_saves_every_n_steps_and_keeps_k(tmp_path):
    manager = ckpt.checkpoint_manager(tmp_path, every_steps=2, keep=2)
    for step in range(1, 8):
        ckpt.save_checkpoint(manager, step=step, state={"w": np.full((2,), step, np.float32)})
    manager.wait_until_finished()
    assert list(manager.all_steps()) == [4, 6]  # saved 2, 4, 6; kept the last two


def test_sigterm_sets_the_guard_and_the_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    manager = ckpt.checkpoint_manager(tmp_path, every_steps=100)
    state = {"w": np.arange(4, dtype=np.float32)}
    with ckpt.preemption_guard() as guard:
        for step in range(1, 10):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # the scheduler preempts us
            ckpt.save_checkpoint(manager, step=step, state=state)
            if guard.should_stop(step):
                ckpt.save_checkpoint(manager, step=step, state=state, force=True)
                manager.wait_until_finished()
                break
    assert step == 3 and manager.latest_step() == 3
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    total, every = 4, 2
    losses, params = train(str(tmp_path / "straight"), total_steps=total, every_steps=every)

    work = tmp_path / "killed"
    work.mkdir()
    _run_worker("resume_worker.py", work, total, every, total // 2, expect_kill=True)
    assert ckpt.checkpoint_manager(work / "checkpoints").latest_step() == total // 2
    _run_worker("resume_worker.py", work, total, every)

    log = [json.loads(line) for line in (work / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, total + 1))  # resumed at N/2 + 1
    assert {r["step"]: r["loss"] for r in log} == losses  # bitwise: float equality
    resumed = np.load(work / "params.npz")
    for key, value in params.items():
        np.testing.assert_array_equal(resumed[key], value)
