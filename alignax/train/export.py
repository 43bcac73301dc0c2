r"""HF exports of a run: the tokenizer beside the weights, and any checkpoint step's parameters
restored for export (`alignax convert`).

Every trainer exports its final step to `WORKDIR/hf`; `restore_params` + `fill` give another
step, e.g. the best evaluation before a run over-optimised. They need only the workdir: the
resolved `config.json` gives the architecture, the checkpoint's own metadata gives the tree,
and every leaf is restored onto one CPU device, so a checkpoint written on a pod mesh converts
on a laptop. The optimizer state is restored too (orbax restores whole items) and dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
from flax import nnx

from alignax import checkpoint
from alignax.train.context import tokenizer_source

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json")


def export_tokenizer(cfg, export: str) -> None:
    """Copies the run's HF tokenizer files (`context.tokenizer_source`: tokenizer.json, its
    config and special tokens, the chat template in whichever file holds it) into the export,
    so the export alone can be sampled, evaluated or trained from. Byte tokenizer: nothing."""
    src = tokenizer_source(cfg.model)
    if src == "byte" or not os.path.isdir(src) or os.path.abspath(src) == os.path.abspath(export):
        return
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(export, name))


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not a train workdir (no config.json)")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, *, step: int | None = None) -> tuple[int, Any]:
    """`(step, params)` of checkpoint `step` (default: the latest) in `workdir/checkpoints`,
    as the saved nested dicts, every leaf on the first CPU device."""
    manager = checkpoint.checkpoint_manager(os.path.join(os.path.abspath(workdir),
                                                         "checkpoints"))
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
    restored = checkpoint.restore_checkpoint(manager, target=target, step=step)
    return step, restored.state["params"]


def fill(module, saved: Any, what: str):
    """`module` with its parameters replaced by `saved` (matched by tree path)."""
    graphdef, state = nnx.split(module)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    by_key = {checkpoint.path_key(p): x
              for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
    missing = [checkpoint.path_key(p) for p, _ in flat if checkpoint.path_key(p) not in by_key]
    if missing or len(by_key) != len(flat):
        raise ValueError(f"checkpoint {what} does not fit the architecture in config.json: "
                         f"{len(missing)} leaves missing (e.g. {missing[:3]}); checkpoint has "
                         f"{len(by_key)} leaves, model {len(flat)}")
    leaves = []
    for p, x in flat:
        y = by_key[checkpoint.path_key(p)]
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"checkpoint {what}: {checkpoint.path_key(p)} has shape {y.shape}, "
                             f"the model {x.shape}")
        leaves.append(y.astype(x.dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))
