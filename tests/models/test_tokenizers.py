"""Byte tokenizer, tokenizer.json loading and chat templates."""

import json

import pytest

from alignax import models

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
    "\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "5"}]


def test_byte_tokenizer_round_trip():
    tok = models.load_tokenizer("byte")
    assert isinstance(tok, models.ByteTokenizer)
    ids = tok.encode("héllo", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id == 257 and ids[-1] == tok.eos_id == 258
    assert ids[1:-1] == list("héllo".encode())  # é is two UTF-8 bytes
    assert tok.decode(ids) == "héllo"
    assert tok.decode(ids + [tok.pad_id], skip_special_tokens=False) == "<bos>héllo<eos><pad>"
    assert tok.vocab_size == 259 <= models.tiny_config("llama").vocab_size
    text = tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=True)
    assert text == "system: Be brief.\nuser: What is 2+3?\nassistant: "


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models as tokenizer_models
    from tokenizers import pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(tokenizer_models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["What is 2+3? Be brief. 5", "hello world"] * 20, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>",
        "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
        "chat_template": TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


def test_hf_tokenizer_encode_decode(hf_dir):
    tok = models.load_tokenizer(hf_dir)
    assert isinstance(tok, models.HFTokenizer)
    ids = tok.encode("hello world")
    assert tok.decode(ids) == "hello world"
    assert tok.encode_batch(["hello", "world"])[1] == tok.encode("world")
    assert tok.bos_id == tok.tokenizer.token_to_id("<s>")
    assert tok.eos_id == tok.pad_id == tok.tokenizer.token_to_id("</s>")  # pad falls back to eos
    assert tok.vocab_size == tok.tokenizer.get_vocab_size() > 259


def test_chat_template_matches_transformers(hf_dir):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    ours = models.load_tokenizer(hf_dir)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dir)
    for gen in (False, True):
        text = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert text == theirs.apply_chat_template(MESSAGES, add_generation_prompt=gen,
                                                  tokenize=False)
    assert text.startswith("<s><|system|>\nBe brief.</s>\n") and text.endswith("<|assistant|>\n")
    ids = ours.apply_chat_template(MESSAGES, tokenize=True)
    assert ids[0] == ours.bos_id and ours.decode(ids, skip_special_tokens=False).startswith("<s>")


def test_chat_template_file_and_missing_template(hf_dir, tmp_path):
    for name in ("tokenizer.json",):
        (tmp_path / name).write_text((hf_dir / name).read_text())
    with pytest.raises(ValueError, match="no chat template"):
        models.load_tokenizer(tmp_path).apply_chat_template(MESSAGES)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}"
                                                  "{% endfor %}")
    assert models.load_tokenizer(tmp_path).apply_chat_template(MESSAGES) == \
        "Be brief.What is 2+3?5"


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        models.load_tokenizer(tmp_path)
