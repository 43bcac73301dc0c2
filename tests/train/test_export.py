"""HF exports carry the run's tokenizer."""

import os

from alignax.train.export import export_tokenizer
from tests.runs import load


def test_exports_carry_the_hf_tokenizer(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(), out.mkdir()
    (src / "tokenizer.json").write_text("{}")
    (src / "tokenizer_config.json").write_text("{}")
    cfg = load("sft", f"--config.model.tokenizer={src}")
    export_tokenizer(cfg, str(out))
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json"]
    export_tokenizer(load("sft"), str(tmp_path / "none"))  # byte tokenizer: nothing
    assert not (tmp_path / "none").exists()
