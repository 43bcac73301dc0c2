"""Config loading, overrides and validation: every error names the file and the field."""

import ast
import glob
import json
import os
import textwrap

import pytest

from alignax import algorithms, config
from tests.runs import CONFIGS, load

GOOD = """
import ml_collections

def get_config(variant="default"):
    c = ml_collections.ConfigDict()
    c.algorithm = "dpo"
    c.model = dict(name="tiny")
    c.data = dict(path="")
    c.loss = dict(name="sigmoid", beta=0.1)
    c.optim = dict(learning_rate=1e-3)
    c.train = dict(steps=10, batch_size=4, seed=0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.checkpoint = dict(every_steps=5, keep=2)
    if variant == "smoke":
        c.train.steps = 2
    return c
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent(GOOD))
    return str(path)


def test_load_variant_and_override(cfg_path):
    cfg = config.load_config(cfg_path + ":smoke")
    assert cfg.train.steps == 2
    config.apply_overrides(cfg, ["--config.train.steps=7", "--config.loss.name=ipo",
                                 "--config.loss.label_smoothing=0.1", "--config.mesh.data=2"])
    assert (cfg.train.steps, cfg.loss.name, cfg.loss.label_smoothing, cfg.mesh.data) == (
        7, "ipo", 0.1, 2)
    config.validate(cfg)


@pytest.mark.parametrize("override, message", [
    ("--config.train.stepz=3", "unknown config field 'train.stepz'"),
    ("--config.nope.x=3", "unknown config field 'nope'"),
    ("--config.train.steps=abc", "field 'train.steps'"),
    ("--train.steps=3", "expected --config.KEY=VALUE"),
])
def test_bad_overrides(cfg_path, override, message):
    cfg = config.load_config(cfg_path)
    with pytest.raises(config.ConfigError, match=message):
        config.apply_overrides(cfg, [override])


@pytest.mark.parametrize("override, message", [
    ("--config.train.steps=0", "'train.steps' must be a positive integer"),
    ("--config.mesh.fsdp=-1", "at most one axis may be -1"),
    ("--config.mesh.tensor=0", "'mesh.tensor' must be a positive integer or -1"),
])
def test_validation(cfg_path, override, message):
    cfg = config.apply_overrides(config.load_config(cfg_path), [override])
    with pytest.raises(config.ConfigError, match=message):
        config.validate(cfg)


def test_broken_config_file_names_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import ml_collections\n\ndef get_config(v='default'):\n    return 1 / 0\n")
    with pytest.raises(config.ConfigError, match=r"bad.py:4: get_config\('default'\) failed"):
        config.load_config(str(path) + ":default")
    with pytest.raises(config.ConfigError, match="no such config file"):
        config.load_config(str(tmp_path / "missing.py"))


# ---------------------------------------------------------------------------- resolution

def _variants(path):
    tree = ast.parse(open(path).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "VARIANTS":
            return ast.literal_eval(node.value)
    return None


CONFIG_FILES = sorted(f for f in glob.glob(os.path.join(CONFIGS, "*.py"))
                      if not f.endswith("common.py"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_variant_resolves(path):
    # Every experiment config declares its variants, and each resolves against its
    # algorithm: no unknown or ignored field anywhere; resolving twice changes nothing.
    variants = _variants(path)
    assert variants and "smoke" in variants, "declare VARIANTS (with a smoke variant)"
    for variant in variants:
        cfg = algorithms.resolve_config(config.load_config(f"{path}:{variant}"))
        assert algorithms.resolve_config(cfg).to_dict() == cfg.to_dict()
        assert cfg.train.logits_chunk == config.DEFAULTS["train"]["logits_chunk"]


def test_unknown_variant_is_an_error():
    with pytest.raises(config.ConfigError, match=r"dpo.py: unknown variant 'nosuchvariant'; "
                                                 r"known: default, demo, smoke"):
        config.load_config(os.path.join(CONFIGS, "dpo.py:nosuchvariant"))


@pytest.mark.parametrize("name, overrides, message", [
    # A typo in the loss section (TRL's beta) trains nothing.
    ("dpo", ["--config.loss.bta=0.5"], r"'loss.bta' is not a keyword of dpo \(loss.name="
                                       r"'sigmoid'\); its keywords: beta, discopop_tau"),
    # loss.name names the variant within the algorithm: simpo cannot train orpo.
    ("simpo", ["--config.loss.name=orpo"], r"'loss.name': algorithm 'simpo' has no variant "
                                           r"'orpo'; known: simpo"),
    ("dpo", ["--config.loss.name=nosuch"], r"'loss.name': algorithm 'dpo' has no variant "
                                           r"'nosuch'"),
    ("grpo", ["--config.loss.name=rloo"], r"no variant 'rloo'; known: bnpo, dapo, dr_grpo, grpo"),
    ("rloo", ["--config.loss.loss_type=grpo"], r"'loss.loss_type' is not a keyword of rloo"),
    ("reward_model", ["--config.loss.beta=0.1"], r"'loss.beta' is not a keyword of "
                                                 r"reward_model"),
    # A section or field the algorithm does not read is an error, not ignored.
    ("sft", ["--config.reference.dtype=bfloat16"], r"section 'reference' is not used by "
                                                    r"algorithm 'sft'"),
    ("dpo", ["--config.rollout.top_k=5"], r"section 'rollout' is not used by algorithm 'dpo'"),
    ("dpo", ["--config.data.objectives=('a', 'b')"], r"'data.objectives' is not used by "
                                                     r"algorithm 'dpo'"),
    ("dpo", ["--config.train.steps=2.5"], r"field 'train.steps'"),
    ("dpo", ["--config.train.eval_every='often'"], r"field 'train.eval_every'"),
    ("dpo", ["--config.algorithm=nosuch"], r"'algorithm': unknown 'nosuch'; known: adpa, cpo"),
])
def test_resolution_errors_name_the_field(name, overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        algorithms.resolve_config(load(name, *overrides))


def test_resolution_checks_types_written_in_the_config():
    cfg = load("dpo")
    cfg.train = dict(cfg.train, eval_every="often")  # a new dict: no ConfigDict type check
    with pytest.raises(config.ConfigError, match=r"'train.eval_every' must be an integer, got "
                                                 r"'often'"):
        algorithms.resolve_config(cfg)


def test_resolution_fills_the_variant_defaults():
    cfg = algorithms.resolve_config(load("simpo", "--config.algorithm=cpo",
                                         "--config.loss={'name': 'hinge'}"))
    assert dict(cfg.loss) == {"name": "hinge", "beta": 0.1, "alpha": 0.0, "nll_weight": 1.0}
    cfg = algorithms.resolve_config(load("grpo"))
    assert cfg.rollout.max_resample == 4 and cfg.reference.dtype == ""
    assert "heads" not in cfg and "teacher" not in cfg


def test_a_runs_config_json_loads_back_to_the_same_config(tmp_path):
    resolved = algorithms.resolve_config(load("dpo", "--config.loss.beta=0.3"))
    path = tmp_path / "config.json"
    path.write_text(resolved.to_json(indent=2))
    again = algorithms.resolve_config(config.load_config(str(path)))
    assert again.to_json() == resolved.to_json()
    assert config.diff(json.loads(resolved.to_json()), json.loads(again.to_json())) == []


def test_bad_json_and_unknown_config_files_are_named(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"algorithm": "dpo",\n  "train": {steps: 3}}')
    with pytest.raises(config.ConfigError, match=r"config.json:2: invalid JSON"):
        config.load_config(str(bad))
    with pytest.raises(config.ConfigError, match="no variants"):
        config.load_config(f"{bad}:smoke")
    other = tmp_path / "config.yaml"
    other.write_text("algorithm: dpo\n")
    with pytest.raises(config.ConfigError, match="a Python file"):
        config.load_config(str(other))
