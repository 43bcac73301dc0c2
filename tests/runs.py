"""Running experiment configs from tests: load `experiments/configs/NAME.py:VARIANT` with
overrides, and train it quietly (`alignax.algorithms.run`, what `alignax train` calls)."""

import os

from alignax import algorithms, config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
QUIET = dict(log=lambda *_: None)


def load(name: str, *overrides: str, variant: str = "smoke"):
    """The config `experiments/configs/{name}.py:{variant}` with `--config.K=V` overrides."""
    cfg = config.load_config(os.path.join(CONFIGS, f"{name}.py") + f":{variant}")
    return config.apply_overrides(cfg, list(overrides))


def train(cfg, workdir, **kwargs) -> dict:
    """`algorithms.run(cfg, workdir)`, silent unless `log=` is given."""
    return algorithms.run(cfg, str(workdir), **{**QUIET, **kwargs})
