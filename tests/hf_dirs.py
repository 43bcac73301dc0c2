"""A user's own model and data, made offline: a tiny BPE tokenizer with a chat template and a
BOS-adding post-processor (as Llama's), a random-init Llama saved in HF format beside it, and
preference / SFT JSONL files (text, chat, HH dialogues, gzipped)."""

import gzip
import json
import os

# ChatML, as Qwen / many instruct models: every turn ends with <|im_end|>, which is also EOS.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["Human: What is 2+3? Assistant: It is 5.", "Be brief and kind.",
          "user assistant system hello world", "The capital of France is Paris."]


def write_tokenizer(path: str, *, vocab_size: int = 320) -> str:
    """A byte-level BPE `tokenizer.json` (BOS added to every encoding, as Llama's) with a
    ChatML chat template in `tokenizer_config.json`; EOS = <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<unk>",
                   "chat_template": CHAT_TEMPLATE,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return path


def write_model(path: str, *, seed: int = 0, **overrides) -> str:
    """A random-init tiny Llama in HF format with the tokenizer above (vocab 320)."""
    from alignax.models import init_model, tiny_config, to_hf

    to_hf(init_model(tiny_config("llama", **overrides), seed=seed), path)
    write_tokenizer(path)
    return path


def write_jsonl(path: str, records, *, gz: bool = False) -> str:
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def hh_records(n: int):
    """Anthropic-HH style dialogues: chosen and rejected share the prompt up to the last
    `Assistant:` turn; answers of a few words (tens of tokens with the tiny BPE)."""
    out = []
    for i in range(n):
        prompt = f"\n\nHuman: What is {i}+3?\n\nAssistant:"
        out.append({"chosen": prompt + f" It is {i + 3}. Be kind.",
                    "rejected": prompt + f" Maybe {i + 4}, maybe not, who knows."})
    return out


def chat_pairs(n: int):
    """UltraFeedback-style conversational pairs: chosen / rejected are message lists."""
    out = []
    for i in range(n):
        user = {"role": "user", "content": f"What is {i}+3?"}
        out.append({"chosen": [user, {"role": "assistant", "content": f"It is {i + 3}."}],
                    "rejected": [user, {"role": "assistant", "content": "No idea."}]})
    return out
