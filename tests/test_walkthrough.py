"""docs/walkthrough.md, every command, on a tiny Llama with a BPE tokenizer and a chat template:
a user's HF directory and gzipped HH data -> SFT -> reward model -> DPO -> eval -> sample."""

import json
import os

import pytest

from alignax import cli, data
from alignax.models import load_tokenizer
from tests import hf_dirs
from tests.runs import CONFIGS

QUICK = ["--config.train.steps=2", "--config.train.batch_size=8", "--config.train.log_every=1",
         "--config.train.eval_every=2", "--config.train.eval_batches=1",
         "--config.checkpoint.every_steps=2"]


def _train(name, workdir, *overrides):
    return cli.main(["train", "--config", os.path.join(CONFIGS, f"{name}.py"), "--workdir",
                     str(workdir), *QUICK, *overrides])


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    model = hf_dirs.write_model(str(root / "model"))
    train = hf_dirs.write_jsonl(str(root / "hh.jsonl.gz"), hf_dirs.hh_records(160), gz=True)
    held = hf_dirs.write_jsonl(str(root / "held_out.jsonl"), hf_dirs.hh_records(8))
    return root, model, train, held


def test_tokenisation_of_a_users_data(user):
    # Text prompts get the tokenizer's BOS; completions none, and exactly one EOS; a chat
    # template's own end-of-turn (= EOS here) is not doubled.
    _, model, _, _ = user
    tok = load_tokenizer(model)
    limits = data.Limits(64, 64)
    (hh,) = data.parse_records([(("f", 1), hf_dirs.hh_records(1)[0])])
    (row,) = data.tokenize_examples([hh], tok, limits)
    assert row["prompt"][0] == tok.bos_id and tok.bos_id not in row["prompt"][1:]
    for side in ("chosen", "rejected"):
        assert tok.bos_id not in row[side] and row[side].count(tok.eos_id) == 1
        assert row[side][-1] == tok.eos_id
    (chat,) = data.parse_records([(("f", 1), hf_dirs.chat_pairs(1)[0])])
    (row,) = data.tokenize_examples([chat], tok, limits)
    assert tok.bos_id not in row["prompt"]  # the template writes what it needs
    assert row["chosen"].count(tok.eos_id) == 1 and row["chosen"][-1] == tok.eos_id
    assert tok.decode(row["chosen"], skip_special_tokens=False) == "It is 3.<|im_end|>"
    # Cut rows are counted, not silent.
    stats = data.tokenize.TokenStats()
    data.tokenize_examples([hh], tok, data.Limits(4, 3), stats=stats)
    assert (stats.prompts_truncated, stats.completions_truncated) == (2, 2)


@pytest.mark.slow
def test_walkthrough(user, capsys):
    root, model, train, held = user
    runs = root / "runs"
    # 1. SFT on the chosen answers of the pairs; the HF directory brings its tokenizer.
    assert _train("sft", runs / "my_sft", f"--config.model.path={model}",
                  f"--config.data.path={train}", "--config.optim.learning_rate=2e-5") == 0
    summary = json.loads((runs / "my_sft" / "summary.json").read_text())
    assert summary["data"]["train_rows"] == 152 and summary["data"]["prompts_truncated"] == 0
    export = runs / "my_sft" / "hf"
    tok_cfg = json.loads((export / "tokenizer_config.json").read_text())
    assert (export / "tokenizer.json").exists() and "<|im_start|>" in tok_cfg["chat_template"]
    # 2. A reward model and 3. DPO from the SFT export.
    assert _train("reward_model", runs / "my_rm", f"--config.model.path={export}",
                  f"--config.data.path={train}", "--config.optim.learning_rate=1e-5") == 0
    assert _train("dpo", runs / "my_dpo", f"--config.model.path={export}",
                  f"--config.data.path={train}", "--config.optim.learning_rate=5e-7",
                  "--config.loss.beta=0.1") == 0
    # The same command again: a finished workdir is left as it is.
    before = (runs / "my_dpo" / "summary.json").read_text()
    assert _train("dpo", runs / "my_dpo", f"--config.model.path={export}",
                  f"--config.data.path={train}", "--config.optim.learning_rate=5e-7",
                  "--config.loss.beta=0.1") == 0
    assert (runs / "my_dpo" / "summary.json").read_text() == before
    capsys.readouterr()
    # 4. Evaluate: pair metrics against the reference (a workdir), the reward model's own.
    out = str(root / "eval.json")
    assert cli.main(["eval", "--model", str(runs / "my_dpo"), "--data", held, "--reference",
                     str(runs / "my_sft"), "--json", out]) == 0
    (res,) = json.load(open(out)).values()
    assert res["num_pairs"] == 8 and 0 <= res["rewards/accuracies"] <= 1
    assert cli.main(["eval", "--model", str(runs / "my_rm"), "--data", held, "--json",
                     out]) == 0
    (res,) = json.load(open(out)).values()
    assert {"accuracy", "margin", "mean_reward"} <= set(res)
    # 5. Sample with the chat template.
    capsys.readouterr()
    assert cli.main(["sample", "--model", str(runs / "my_dpo"), "--chat", "--prompt",
                     "What is 2+3?", "--temperature", "0", "--max-new-tokens", "8"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    row = json.loads(line)
    assert row["prompt"] == "What is 2+3?" and isinstance(row["completion"], str)
