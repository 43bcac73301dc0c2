"""Config loading, overrides and validation: every error names the file and the field."""

import textwrap

import pytest

from alignax import config

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
