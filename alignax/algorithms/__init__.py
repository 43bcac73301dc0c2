"""Every alignment algorithm, in one registry: `ALGORITHMS[name] -> Algorithm`.

    from alignax import algorithms
    cfg = algorithms.resolve_config(cfg)          # defaults filled, every field checked
    summary = algorithms.run(cfg, "runs/dpo")     # the engine with the algorithm's plan

| name | data | `loss.name` | reference | module |
|---|---|---|---|---|
| `sft` | sft | `nll` | - | `sft` |
| `reward_model` | pairs | `bradley_terry` | - | `reward_model` |
| `dpo` | pairs | any TRL 1.16 loss type, or a list (`sigmoid,sft`) | copy or cached | `dpo` |
| `simpo` | pairs | `simpo` | - | `simpo` |
| `cpo` | pairs | `sigmoid`, `hinge`, `ipo`, `simpo` | - | `simpo` |
| `orpo` | pairs | `orpo` | - | `simpo` |
| `kto` | unpaired | `kto`, `apo_zero_unpaired` | copy | `kto` |
| `mah_dpo` | routed pairs | `sigmoid`, `ipo` | the base model | `mah_dpo` |
| `dckd`, `adpa` (+ADPA+) | pairs | `dckd`, `adpa` | the teachers | `distill` |
| `ppo` | prompts | `ppo` | copy | `online.ppo` |
| `grpo`, `rloo` | prompts | `grpo`, `bnpo`, `dr_grpo`, `dapo` | if a KL term | `online.grpo` |
| `grao` | prompts | `grao` | - | `online.grao` |

A new algorithm is a module with its loss function, a `setup(ctx) -> runner.Plan` (most
offline ones call `base.lm_plan`) and an `Algorithm`, added with `register`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from alignax import config
from alignax.algorithms.base import Algorithm, resolve_loss
from alignax.algorithms.distill import ADPA, DCKD
from alignax.algorithms.dpo import DPO
from alignax.algorithms.kto import KTO
from alignax.algorithms.mah_dpo import MAH_DPO
from alignax.algorithms.online.grao import GRAO
from alignax.algorithms.online.grpo import GRPO, RLOO
from alignax.algorithms.online.ppo import PPO
from alignax.algorithms.reward_model import REWARD_MODEL
from alignax.algorithms.sft import SFT
from alignax.algorithms.simpo import CPO, ORPO, SIMPO
from alignax.train import export, runner

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    SFT, REWARD_MODEL, DPO, SIMPO, CPO, ORPO, KTO, MAH_DPO, DCKD, ADPA, PPO, GRPO, RLOO, GRAO)}


def register(algorithm: Algorithm, *, overwrite: bool = False) -> Algorithm:
    """Adds an algorithm (e.g. from a notebook or a config file); `alignax train` runs it."""
    if algorithm.name in ALGORITHMS and not overwrite:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered (pass "
                         "overwrite=True)")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    """The registered algorithm `name`; ConfigError naming the field otherwise."""
    if name not in ALGORITHMS:
        raise config.ConfigError(f"config field 'algorithm': unknown {name!r}; known: "
                                 f"{', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def resolve_config(cfg: ml_collections.ConfigDict, *,
                   source: str = "config") -> ml_collections.ConfigDict:
    """`cfg` with every default filled and every field checked against its algorithm.

    Unknown sections or keys, sections and fields the algorithm does not read, values of the
    wrong type, an unknown `loss.name` and loss keywords its variant does not take are
    `config.ConfigError`s naming the field. Resolving a resolved config changes nothing.
    """
    if "algorithm" not in cfg:
        raise config.ConfigError(f"{source}: missing field 'algorithm'")
    algorithm = get(cfg.algorithm)
    values = config.resolve(cfg, sections=algorithm.sections, claims=algorithm.claims,
                            source=source)
    values["loss"] = resolve_loss(algorithm, values["loss"], source=source)
    if "dckd_stage" in values:  # ADPA+: its first stage trains DCKD with this loss
        values["dckd_stage"]["loss"] = resolve_loss(DCKD, values["dckd_stage"]["loss"],
                                                    source=source, field="dckd_stage.loss")
    return config.to_config(values)


def run(cfg: ml_collections.ConfigDict, workdir: str, *, log=print,
        source: str = "config") -> dict[str, Any]:
    """Trains as `cfg` says in `workdir` (resuming there if it holds checkpoints); returns the
    summary written to `workdir/summary.json`."""
    cfg = resolve_config(cfg, source=source)
    algorithm = ALGORITHMS[cfg.algorithm]
    if algorithm.run is not None:
        return algorithm.run(cfg, workdir, log=log, resolve=resolve_config)
    return runner.run(cfg, workdir, algorithm.setup, log=log)


def lenient_config(values: dict) -> ml_collections.ConfigDict:
    """A run's `config.json` with defaults filled under it and nothing checked: what
    `export_checkpoint` reads from workdirs of any version."""
    out = {k: v for k, v in values.items()}
    for section, defaults in config.DEFAULTS.items():
        out[section] = {**defaults, **(values.get(section) or {})}
    return config.to_config(out)


def export_checkpoint(workdir: str, out: str, *, step: int | None = None,
                      log=print) -> dict[str, Any]:
    """Writes checkpoint `step` (default: the latest) of the run in `workdir` as an HF
    directory `out`, whatever its algorithm (`alignax convert`)."""
    cfg = lenient_config(export.read_run_config(workdir).to_dict())
    algorithm = get(cfg.algorithm)
    step, params = export.restore_params(workdir, step=step)
    if algorithm.export_key is not None:
        params = params[algorithm.export_key]
    module = export.fill(algorithm.skeleton(cfg), params, f"{workdir}/checkpoints/{step}")
    algorithm.save(module, out, cfg)
    export.export_tokenizer(cfg, out)
    log(f"exported step {step} of {workdir} ({cfg.algorithm}) to {out}")
    return {"step": step, "algorithm": cfg.algorithm, "out": out}


__all__ = ["ALGORITHMS", "Algorithm", "export_checkpoint", "get", "register", "resolve_config",
           "run"]
