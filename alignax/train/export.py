r"""Any checkpoint step of a run -> an HF export, behind `alignax convert`.

Every trainer exports its final step to `WORKDIR/hf`; this exports another step, e.g. the
best evaluation before a run over-optimised (PPO against a learned reward model peaks early:
experiments/README.md). It needs only the workdir: the resolved `config.json` gives the
architecture, the checkpoint's own metadata gives the tree, and every leaf is restored onto
one CPU device, so a checkpoint written on a pod mesh converts on a laptop. The optimizer
state is restored too (orbax restores whole items) and dropped.

What is exported, by `config.algorithm`:
  offline LM trainers, dckd / adpa, online ppo / grpo / rloo / grao: the policy (`to_hf`);
  reward_model: trunk + reward head (`save_reward_model`);
  mah_dpo: the trunk, all heads and their objective names (`save_multihead`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from alignax import checkpoint as ckpt
from alignax.models import to_hf
from alignax.models.reward_model import RewardModel, save_reward_model
from alignax.train import loop

ONLINE = ("ppo", "grpo", "rloo", "grao")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a train workdir (no config.json)")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, *, step: int | None = None) -> tuple[int, Any]:
    """`(step, params)` of checkpoint `step` (default: the latest) in `workdir/checkpoints`,
    as the saved nested dicts, every leaf on the first CPU device."""
    manager = ckpt.checkpoint_manager(os.path.join(os.path.abspath(workdir), "checkpoints"))
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"--step {step}: {workdir}/checkpoints holds steps {steps}")
    meta = manager.item_metadata(step)["state"]
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=cpu),
                          getattr(meta, "tree", meta))
    restored = ckpt.restore_checkpoint(manager, target=target, step=step)
    return step, restored.state["params"]


def _fill(module, saved: Any, what: str):
    """`module` with its parameters replaced by `saved` (matched by tree path)."""
    graphdef, state = nnx.split(module)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    by_key = {ckpt._path_key(p): x
              for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
    missing = [ckpt._path_key(p) for p, _ in flat if ckpt._path_key(p) not in by_key]
    if missing or len(by_key) != len(flat):
        raise ValueError(f"checkpoint {what} does not fit the architecture in config.json: "
                         f"{len(missing)} leaves missing (e.g. {missing[:3]}); checkpoint has "
                         f"{len(by_key)} leaves, model {len(flat)}")
    leaves = []
    for p, x in flat:
        y = by_key[ckpt._path_key(p)]
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"checkpoint {what}: {ckpt._path_key(p)} has shape {y.shape}, "
                             f"the model {x.shape}")
        leaves.append(y.astype(x.dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


def export_checkpoint(workdir: str, out: str, *, step: int | None = None,
                      log=print) -> dict[str, Any]:
    """Writes checkpoint `step` of the run in `workdir` as an HF directory `out`."""
    cfg = read_run_config(workdir)
    alg = cfg.algorithm
    step, params = restore_params(workdir, step=step)
    what = f"{workdir}/checkpoints/{step}"
    base = loop.build_model(cfg)
    if alg == "reward_model":
        save_reward_model(_fill(RewardModel(base, rngs=nnx.Rngs(0)), params, what), out)
    elif alg == "mah_dpo":
        from alignax.train import multihead_run as MR
        from alignax.train.multihead import MultiHeadLM, save_multihead

        names = MR.objective_names(cfg)
        heads = MR.heads_config(cfg)
        skeleton = MultiHeadLM.from_base(base, MR._heads(cfg, names), noise_std=0.0, seed=0)
        save_multihead(_fill(skeleton, params, what), out, objectives=names,
                       weights=tuple(heads["export_weights"] or ()) or None)
    elif alg in ONLINE:
        to_hf(_fill(base, params["policy"], what), out)
    else:
        to_hf(_fill(base, params, what), out)
    loop.export_tokenizer(cfg, out)
    log(f"exported step {step} of {workdir} ({alg}) to {out}")
    return {"step": step, "algorithm": alg, "out": out}
