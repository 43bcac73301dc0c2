"""Experiment configs: load `PATH[:VARIANT]`, apply `--config.KEY=VALUE` overrides, validate.

A config file is a Python file with `get_config(variant: str = "default") -> ConfigDict`
(big_vision style). Every config has the sections of the public contract: `algorithm`, `model`,
`data`, `loss`, `optim`, `train`, `mesh`, `checkpoint`. Only `cli` and `train` read config
objects; library functions take keyword arguments.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import traceback

import ml_collections

REQUIRED_SECTIONS = ("algorithm", "model", "data", "loss", "optim", "train", "mesh", "checkpoint")
REQUIRED_FIELDS = {
    "loss": ("name",),
    "train": ("steps", "batch_size", "seed"),
    "checkpoint": ("every_steps", "keep"),
}


class ConfigError(ValueError):
    """A bad config: the one-line message names the file and the field."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `PATH[:VARIANT]` by calling the file's `get_config(VARIANT)`."""
    path, _, variant = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such config file")
    module_name = "alignax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec_obj = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec_obj)
    # Configs may import their neighbours (`import common`).
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec_obj.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report where it broke, in one line
        frame = next((f for f in reversed(traceback.extract_tb(e.__traceback__))
                      if os.path.abspath(f.filename) == os.path.abspath(path)), None)
        where = f"{path}:{frame.lineno}" if frame else path
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(variant) function")
    try:
        cfg = module.get_config(variant) if variant else module.get_config()
    except Exception as e:
        frame = next((f for f in reversed(traceback.extract_tb(e.__traceback__))
                      if os.path.abspath(f.filename) == os.path.abspath(path)), None)
        where = f"{path}:{frame.lineno}" if frame else path
        raise ConfigError(f"{where}: get_config({variant!r}) failed: {type(e).__name__}: {e}"
                          ) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config must return an ml_collections.ConfigDict")
    cfg.unlock()
    return cfg


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --config.loss.name=ipo


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str], *,
                    source: str = "command line") -> ml_collections.ConfigDict:
    """Applies `config.a.b=value` (or `--config.a.b=value`) strings; values are Python literals.

    Unknown fields and type mismatches raise `ConfigError` naming the field. `loss.*` accepts
    new keys (loss keyword arguments are open-ended).
    """
    for item in overrides:
        key, eq, text = item.lstrip("-").partition("=")
        if not eq or not key.startswith("config."):
            raise ConfigError(f"{source}: expected --config.KEY=VALUE, got {item!r}")
        path = key[len("config."):].split(".")
        node = cfg
        for i, part in enumerate(path[:-1]):
            if part not in node:
                raise ConfigError(f"{source}: unknown config field "
                                  f"{'.'.join(path[:i + 1])!r}")
            node = node[part]
        leaf, value = path[-1], _parse_value(text)
        if leaf not in node and path[0] not in ("loss", "mesh"):
            raise ConfigError(f"{source}: unknown config field {'.'.join(path)!r}; "
                              f"known in this section: {sorted(node.keys())}")
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: field {'.'.join(path)!r}: {e}") from None
    return cfg


def validate(cfg: ml_collections.ConfigDict, *, source: str = "config") -> None:
    """Checks the sections and fields every config must have, with their basic types."""
    for section in REQUIRED_SECTIONS:
        if section not in cfg:
            raise ConfigError(f"{source}: missing section {section!r}")
    for section, fields in REQUIRED_FIELDS.items():
        for f in fields:
            if f not in cfg[section] or cfg[section][f] is None:
                raise ConfigError(f"{source}: missing field '{section}.{f}'")
    for f in ("steps", "batch_size"):
        value = cfg.train[f]
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
