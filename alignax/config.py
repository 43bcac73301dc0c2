"""Experiment configs: load `PATH[:VARIANT]`, apply `--config.KEY=VALUE` overrides, resolve.

A config file is a Python file with `get_config(variant: str = "default") -> ConfigDict`
(big_vision style) and, optionally, `VARIANTS = ("default", "smoke", ...)`: an unknown variant
is then an error instead of silently running the default. Every config has the sections of
the public contract: `algorithm`, `model`, `data`, `loss`, `optim`, `train`, `mesh`,
`checkpoint`; an algorithm may read more (`reference`, `rollout`, `reward`, `heads`, `teacher`,
`sampling`, `dckd_stage`).

`DEFAULTS` below is the one source of every default: `resolve` fills what a config leaves out,
and rejects what it cannot use (an unknown key, a section or field the algorithm ignores, a
value of the wrong type), naming the field. The `loss` section is resolved by the algorithm
(`alignax.algorithms`), whose `loss.name` variants and loss keywords are its own. Only `cli`,
`train` and `algorithms` read config objects; library functions take keyword arguments.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections

REQUIRED_SECTIONS = ("algorithm", "model", "data", "loss", "optim", "train", "mesh", "checkpoint")
# Sections every algorithm may use besides the required ones (filled with defaults).
COMMON_SECTIONS = ("lora", "resume", "logging")

# Every section and field with its default. A field documented here is documented once.
DEFAULTS: dict[str, dict[str, Any]] = {
    # A named tiny architecture trained from scratch (`name` + `overrides`), or `path` = a
    # local HF directory. `tokenizer`: "byte", a directory with tokenizer.json, or "" = the
    # model directory's tokenizer.json if it has one, else "byte". `dtype` is the compute
    # dtype, `param_dtype` the master weights'; `remat`: none | full | save_dots. save_dots
    # (keep the weight matmuls' outputs, recompute the rest) is the default: on one H100 it
    # trained the 1B DPO step faster than none at less than two thirds of the memory
    # (benchmarks/RESULTS.md), and on CPU it gives the same numbers bit for bit.
    "model": dict(name="llama", path="", tokenizer="", dtype="float32", param_dtype="float32",
                  remat="save_dots", overrides={}),
    # The frozen reference (DPO family, KTO, MAH-DPO, PPO / GRPO with a KL term): `dtype` "" =
    # as the policy; `precompute` scores the data once, caches the log-probs on disk under a
    # fingerprint (`cache_dir`, default WORKDIR/ref_cache) and drops the copy.
    "reference": dict(dtype="", precompute=False, cache_dir=""),
    # `path` = a local JSONL / Parquet / `tfds:NAME/SPLIT@DIR` source; empty = the built-in
    # `task` (arithmetic; `multiobjective` for MAH-DPO), whose wrong answers are `answer +
    # offset` (`error_offsets`; offset 1: a systematic annotator error). `eval_path`, else the
    # last `eval_fraction` of the file. `on_error`: raise | skip (skipped rows are counted).
    # `objectives`, `balance`, `conflict`: MAH-DPO's objective names (head order), balanced
    # batches (B/O pairs per objective) and the built-in task's share of conflicting pairs.
    # `max_prompt_length` / `max_completion_length`: tokens kept (a prompt keeps its end, a
    # completion its start; every cut is counted and reported); None = the data's default:
    # 512 / 512 for `path` (TRL's max_length 1024), 8 / 6 for the built-in task.
    # `packing`: several rows per batch row (segment ids, positions restarting per segment;
    # SFT and the DPO family), `pack_width` tokens wide (0 = the longest row the limits allow).
    "data": dict(path="", eval_path="", eval_fraction=0.05, format="auto", on_error="raise",
                 task="arithmetic", num_train=4096, num_eval=256, max_operand=20,
                 error_rate=0.0, error_offsets=(1,), max_prompt_length=None,
                 max_completion_length=None, buckets=(), objectives=(), balance=True,
                 conflict=1.0, packing=False, pack_width=0),
    # AdamW with linear warmup then `decay` (cosine | linear | constant) to
    # `end_learning_rate`, global-norm clipping (`max_grad_norm`, None = off).
    "optim": dict(name="adamw", learning_rate=1e-3, warmup_steps=10, decay="cosine",
                  end_learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                  max_grad_norm=1.0),
    # `batch_size`: pairs / rows per step (prompts per rollout batch online); `grad_accum`
    # micro-batches per step; metrics every `log_every`, eval every `eval_every` (0 = never)
    # over `eval_batches` batches and `eval_prompts` greedy task prompts; `logits_chunk`:
    # tokens per chunk of the log-prob scan; `sweep_points` (MAH-DPO, two heads): weight
    # vectors decoded at the end.
    "train": dict(steps=200, batch_size=32, seed=0, grad_accum=1, log_every=20,
                  eval_every=100, eval_batches=4, eval_prompts=128, logits_chunk=128,
                  export_hf=True, sweep_points=0),
    # Axis name -> size, -1 = the rest of the devices; `sequence` (optional) splits long
    # sequences' activations (context parallelism, docs/scale.md).
    "mesh": dict(data=-1, fsdp=1, tensor=1),
    # LoRA adapters (Hu et al. 2021): rank > 0 trains only `rank`-dim adapters on the
    # `targets` projections, scaled alpha / rank (plus small heads outside the transformer:
    # score, value, MAH-DPO heads); the base weights stay frozen, stored once (the reference
    # is the base without adapters), and are merged into the HF export. `dropout`: sft, dpo,
    # simpo, cpo, orpo, kto only.
    "lora": dict(rank=0, alpha=16.0, dropout=0.0,
                 targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down")),
    "checkpoint": dict(every_steps=100, keep=2),
    # Rerunning into a workdir resumes from its latest checkpoint; a config that differs from
    # the one the workdir was trained with is an error (the diff is printed) unless
    # `allow_changes` (e.g. to train longer).
    "resume": dict(allow_changes=False),
    # Optional Weights & Biases logging (lazy import; `pip install wandb`).
    "logging": dict(wandb=False, wandb_project="alignax", wandb_name=""),
    # Online RL: G samples per prompt (`num_generations`), sampling settings, stop tokens (in
    # addition to EOS); `num_epochs` x `num_minibatches` updates per rollout batch; DAPO
    # dynamic sampling with up to `max_resample` tries. `slots` > 0: continuous batching
    # through that many decode rows, split over the mesh's data axes (rows that stop early
    # free their slot for the next sample; single-turn; each sample draws with its own key,
    # so the samples differ from the default static batching's for the same seed).
    # `async_rollouts` (grpo, rloo, ppo, grao): step k+1's batch is sampled from the
    # parameters before step k's update, queued ahead of it (one step off-policy); each
    # sampled token's loss is weighted by the truncated importance ratio
    # min(pi_old / pi_sampler, `importance_cap`) (TRL's vLLM correction).
    "rollout": dict(num_generations=8, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6,
                    stop_tokens=(), num_epochs=1, num_minibatches=1, dynamic_sampling=False,
                    max_resample=4, slots=0, async_rollouts=False, importance_cap=2.0),
    # Multi-turn online RL (grpo / rloo / ppo): `name` "" = single-turn, "calculator", or your
    # `package.module:factory`; a turn ends at `tool_end` (or EOS) or after `max_turn_tokens`
    # (0 = rollout.max_new_tokens); `max_total_tokens` (0 = max_turns x (turn + observation
    # budget)) is the episode's width; observations are cut at `max_observation_chars`.
    # `reward_weight` x the episode's summed per-turn environment rewards is added to the
    # reward (0 = logged as episodes/environment_reward only).
    "environment": dict(name="", max_turns=3, max_turn_tokens=0, max_total_tokens=0,
                        tool_start="<tool>", tool_end="</tool>", result_start="<result>",
                        result_end="</result>", max_observation_chars=32, reward_weight=0.0),
    # Online RL rewards: `functions` (built-in names, `regex:PATTERN`, or your own
    # `package.module:function`) with `weights`, a reward model in `model_path` (weight
    # `model_weight`), and length / over-long / missing-EOS shaping (0 = off).
    # `timeout_seconds` > 0 runs the functions in threads, NaN after that long (0 = no limit).
    "reward": dict(functions=("arithmetic_correct",), weights=(1.0,), model_path="",
                   model_weight=1.0, length_penalty=0.0, overlong_buffer=0,
                   missing_eos_penalty=0.0, timeout_seconds=0.0),
    # MAH-DPO heads: `num_heads` 0 = one per objective, 1 = single-head baseline; each head =
    # the base head + N(0, noise_std^2) (`seed`); `export_weights` () = uniform mixture;
    # `trunk_lr_scale`: the trunk's learning rate relative to the heads' (0 = frozen trunk).
    "heads": dict(num_heads=0, noise_std=1e-3, seed=42, export_weights=(),
                  trunk_lr_scale=1.0),
    # Distillation teachers: `path` = the DPO teacher, `ref_path` = its SFT model (ADPA);
    # empty = a random tiny teacher (`name`, `overrides`, `seed`) for smoke runs. `top_k`: K
    # bins of the teacher's distribution (0 = exact full-vocabulary KL, in-step only);
    # `precompute` caches them on disk once (`cache_dir`, default WORKDIR/teacher_cache).
    "teacher": dict(path="", ref_path="", tokenizer="", name="llama", overrides={}, seed=1,
                    dtype="", top_k=50, precompute=False, cache_dir="", advantage_beta=1.0),
    # ADPA: how the student's own responses (the rejected y_l) are drawn, once: batches of
    # `batch_size` prompts, or with `slots` > 0 all of them through the continuous-batching
    # engine's `slots` decode rows.
    "sampling": dict(temperature=1.0, top_k=0, top_p=1.0, seed=0, batch_size=64, slots=0),
    # ADPA+: `steps` > 0 first trains DCKD for `steps` (this `loss`, `learning_rate`), then
    # ADPA from the DCKD student.
    "dckd_stage": dict(steps=0, learning_rate=1e-4, loss=dict(name="dckd")),
}

OPTIONAL_SECTIONS = ("reference", "rollout", "reward", "heads", "teacher", "sampling",
                     "dckd_stage", "environment")
# Fields whose keys are the user's (any key, any value).
OPEN_FIELDS = ("model.overrides", "teacher.overrides", "dckd_stage.loss", "mesh")
# Fields of shared sections that only the algorithms claiming them may set.
CLAIMED_FIELDS = ("data.objectives", "data.balance", "data.conflict", "train.sweep_points",
                  "data.packing", "data.pack_width", "lora.dropout")


class ConfigError(ValueError):
    """A bad config: the one-line message names the file and the field."""


def _where(path: str, exc: BaseException) -> str:
    frame = next((f for f in reversed(traceback.extract_tb(exc.__traceback__))
                  if os.path.abspath(f.filename) == os.path.abspath(path)), None)
    return f"{path}:{frame.lineno}" if frame else path


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `PATH[:VARIANT]` by calling the file's `get_config(VARIANT)`, or a JSON config
    (`PATH.json`, e.g. a run's `WORKDIR/config.json`: the exact config it ran)."""
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such config file")
    if path.endswith(".json"):
        if variant:
            raise ConfigError(f"{spec}: a JSON config has no variants")
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a JSON config is an object of sections")
        return ml_collections.ConfigDict(values)
    if not path.endswith(".py"):
        raise ConfigError(f"{path}: a config is a Python file (get_config) or a .json file")
    module_name = "alignax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec_obj = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec_obj)
    # Configs may import their neighbours (`import common`).
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec_obj.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it broke, in one line
        raise ConfigError(f"{_where(path, e)}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(variant) function")
    known = getattr(module, "VARIANTS", None)
    if variant and known is not None and variant not in known:
        raise ConfigError(f"{path}: unknown variant {variant!r}; known: {', '.join(known)}")
    try:
        cfg = module.get_config(variant) if variant else module.get_config()
    except Exception as e:
        raise ConfigError(f"{_where(path, e)}: get_config({variant!r}) failed: "
                          f"{type(e).__name__}: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    cfg.unlock()
    return cfg


def defaults(*sections: str) -> ml_collections.ConfigDict:
    """A ConfigDict of the given sections (default: the required ones) at their defaults."""
    names = sections or tuple(s for s in REQUIRED_SECTIONS if s in DEFAULTS)
    return ml_collections.ConfigDict({s: copy.deepcopy(DEFAULTS[s]) for s in names})


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --config.loss.name=ipo


def _known_field(path: list[str]) -> bool:
    """Whether `path` names a field of the schema (or lies inside an open field)."""
    dotted = ".".join(path)
    if path[0] == "loss" or any(dotted == f or dotted.startswith(f + ".")
                                for f in OPEN_FIELDS):
        return True
    return path[0] in DEFAULTS and len(path) == 2 and path[1] in DEFAULTS[path[0]]


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str], *,
                    source: str = "command line") -> ml_collections.ConfigDict:
    """Applies `config.a.b=value` (or `--config.a.b=value`) strings; values are Python literals.

    A field may be set when the config has it or the schema (`DEFAULTS`) knows it; `loss.*`
    keys are checked later, against the algorithm. Anything else raises `ConfigError`.
    """
    for item in overrides:
        key, eq, text = item.lstrip("-").partition("=")
        if not eq or not key.startswith("config."):
            raise ConfigError(f"{source}: expected --config.KEY=VALUE, got {item!r}")
        path = key[len("config."):].split(".")
        node = cfg
        for i, part in enumerate(path[:-1]):
            if part not in node:
                if not _known_field(path[:i + 1] + ["?"]) and not (
                        i == 0 and part in DEFAULTS):
                    raise ConfigError(f"{source}: unknown config field "
                                      f"{'.'.join(path[:i + 1])!r}")
                node[part] = {}
            node = node[part]
        leaf, value = path[-1], _parse_value(text)
        if leaf not in node and not _known_field(path):
            raise ConfigError(f"{source}: unknown config field {'.'.join(path)!r}; "
                              f"known in this section: {sorted(_section_keys(path[0], node))}")
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: field {'.'.join(path)!r}: {e}") from None
    return cfg


def _section_keys(section: str, node) -> set[str]:
    return set(node.keys()) | set(DEFAULTS.get(section, {}))


def validate(cfg: ml_collections.ConfigDict, *, source: str = "config") -> None:
    """Checks the sections and fields every config must have, with their basic types."""
    for section in REQUIRED_SECTIONS:
        if section not in cfg:
            raise ConfigError(f"{source}: missing section {section!r}")
    if "name" not in cfg.loss or cfg.loss.name is None:
        raise ConfigError(f"{source}: missing field 'loss.name'")
    train = {**DEFAULTS["train"], **dict(cfg.train)}
    for f in ("steps", "batch_size"):
        value = train[f]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{source}: field 'train.{f}' must be a positive integer, "
                              f"got {value!r}")
    mesh = dict(cfg.mesh)
    for axis, size in mesh.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"{source}: field 'mesh.{axis}' must be a positive integer or -1, "
                              f"got {size!r}")
    if list(mesh.values()).count(-1) > 1:
        raise ConfigError(f"{source}: field 'mesh': at most one axis may be -1, got {mesh}")


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple | list):
        return "a list"
    return "a dict" if isinstance(value, Mapping) else type(value).__name__


def check_value(field: str, value, default, *, source: str = "config"):
    """`value` checked against the type of `default` (ints pass as floats, lists as tuples).

    Returns the value as the schema stores it (tuples for lists, floats for ints).
    """
    if default is None or value is None:
        return value
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, tuple | list),
          dict: lambda v: isinstance(v, Mapping)}[type(default)](value)
    if not ok:
        raise ConfigError(f"{source}: field {field!r} must be {_type_name(default)}, got "
                          f"{value!r}")
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):
        return tuple(value)
    return dict(value) if isinstance(default, dict) else value


def resolve(cfg: ml_collections.ConfigDict, *, sections: Iterable[str] = (),
            claims: Iterable[str] = (), source: str = "config") -> dict[str, Any]:
    """Every section of `cfg` filled with its defaults and checked; `loss` left as given.

    Args:
      cfg: a loaded config (after overrides).
      sections: the optional sections (`OPTIONAL_SECTIONS`) the algorithm reads; they are
        filled with defaults, and any other optional section in `cfg` is an error.
      claims: the `CLAIMED_FIELDS` the algorithm reads; any other claimed field set to a
        non-default value is an error (it would be silently ignored).
      source: names the config in errors.
    Returns:
      plain nested dicts (`to_config` makes a ConfigDict of them).
    """
    validate(cfg, source=source)
    sections, claims = tuple(sections), set(claims)
    given = cfg.to_dict()
    algorithm = given.pop("algorithm")
    out: dict[str, Any] = {"algorithm": algorithm, "loss": dict(given.pop("loss"))}
    for name in given:
        if name not in DEFAULTS:
            raise ConfigError(f"{source}: unknown config section {name!r}")
        if name in OPTIONAL_SECTIONS and name not in sections:
            raise ConfigError(f"{source}: config section {name!r} is not used by algorithm "
                              f"{algorithm!r} (it reads {', '.join(sections) or 'no other'})")
    for name in [s for s in REQUIRED_SECTIONS if s in DEFAULTS] + list(COMMON_SECTIONS) + list(
            sections):
        values = dict(given.get(name) or {})
        if name == "mesh":
            out[name] = values
            continue
        section = copy.deepcopy(DEFAULTS[name])
        for key, value in values.items():
            field = f"{name}.{key}"
            if key not in section:
                raise ConfigError(f"{source}: unknown config field {field!r}; known in this "
                                  f"section: {', '.join(sorted(section))}")
            default = section[key]
            if field in OPEN_FIELDS:
                section[key] = dict(value) if isinstance(value, Mapping) else value
                continue
            value = check_value(field, value, default, source=source)
            if field in CLAIMED_FIELDS and field not in claims and value != default:
                raise ConfigError(f"{source}: config field {field!r} is not used by algorithm "
                                  f"{algorithm!r}")
            section[key] = value
        out[name] = section
    _data_defaults(out["data"], source)
    return out


# Length limits by data source: TRL's max_length 1024 for real data, the built-in task's own.
_LENGTHS = {True: (512, 512), False: (8, 6)}


def _data_defaults(data: dict, source: str) -> None:
    """Fills the length limits the data implies and checks them."""
    for key, default in zip(("max_prompt_length", "max_completion_length"),
                            _LENGTHS[bool(data["path"])]):
        if data[key] is None:
            data[key] = default
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{source}: field 'data.{key}' must be a positive integer, got "
                              f"{value!r}")


def diff(old: Mapping[str, Any], new: Mapping[str, Any], *,
         ignore: Iterable[str] = ("resume",)) -> list[str]:
    """`field: old -> new` for every field that differs between two resolved configs.

    A field missing from `old` (a config written before the field existed) counts as its
    default; `loss` keys missing from `old` are left out (their defaults are the algorithm's).
    """
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, Mapping) and f"{prefix}{k}" not in OPEN_FIELDS:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
        return out

    a, b = flat(old), flat(new)
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in tuple(ignore):
            continue
        if key not in a:
            section, _, field = key.partition(".")
            if section == "loss" or DEFAULTS.get(section, {}).get(field) == b[key] or (
                    isinstance(b[key], list) and list(DEFAULTS.get(section, {}).get(field) or ())
                    == b[key]):
                continue
        if a.get(key, "(unset)") != b.get(key, "(unset)"):
            changes.append(f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}")
    return changes


def to_config(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Plain nested dicts -> a ConfigDict (what `alignax.algorithms.resolve_config` returns)."""
    return ml_collections.ConfigDict(copy.deepcopy(dict(values)))


def import_object(spec: str, field: str):
    """The object `package.module:name` that config field `field` names, imported with the
    working directory on the path (as `python -m` would); ValueError naming the field."""
    import importlib

    module_name, _, attr = spec.partition(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"config field {field!r}: cannot import {module_name!r} for {spec!r} "
                         f"({e}); put it in the working directory or on PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj = getattr(module, attr, None)
    if not callable(obj):
        raise ValueError(f"config field {field!r}: {module_name} has no callable {attr!r}")
    return obj
