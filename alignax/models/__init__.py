"""Decoder-only transformers (Llama, Qwen2, Qwen3, Mistral) in Flax NNX, HF import/export,
chunked log-probs, KV-cache decoding, heads and tokenisers.

    model = alignax.models.from_hf("/path/to/hf_dir", dtype=jnp.bfloat16)
    logits = alignax.models.forward(model, input_ids, attention_mask)        # [B, S, V]
    hidden, _ = model.hidden_states(input_ids, attention_mask)             # [B, S, E]
    logps = alignax.models.token_logps(hidden[:, :-1], model.lm_head_weight(),
                                       input_ids[:, 1:], mask[:, 1:])      # [B, S-1]
    alignax.models.to_hf(model, "/path/to/out")
    model = alignax.models.add_lora(model, rank=16, alpha=32.0)   # LoRA adapters (lora.py)

torch/transformers are never imported here; safetensors/tokenizers/jinja2 lazily.
"""

from alignax.models import lora, tokenizers
from alignax.models.cache import KVCache, init_cache
from alignax.models.config import ModelConfig, tiny_config
from alignax.models.critic import Critic
from alignax.models.decode import decode_step, extend, prefill
from alignax.models.heads import (
    MultiLMHead,
    RewardHead,
    ValueHead,
    check_head_weights,
    last_token_index,
    mix_heads,
    multi_head_token_logps,
)
from alignax.models.hf import MissingTensorsError, from_hf, to_hf
from alignax.models.logprobs import (
    completion_logps,
    log_sum_sq_probs,
    pair_logps,
    scan_chunks,
    sequence_logps,
    token_entropy,
    token_logps,
    token_stats,
)
from alignax.models.lora import (
    LoRA,
    LoRAAdapter,
    add_lora,
    has_lora,
    lora_state,
    merge_lora,
    remove_lora,
    split_lora,
)
from alignax.models.multihead import MultiHeadLM, load_multihead, save_multihead
from alignax.models.reward_model import RewardModel, load_reward_model, save_reward_model
from alignax.models.tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer
from alignax.models.transformer import Transformer, forward, init_model, logical_axes

__all__ = [
    "ByteTokenizer",
    "Critic",
    "HFTokenizer",
    "KVCache",
    "LoRA",
    "LoRAAdapter",
    "MissingTensorsError",
    "ModelConfig",
    "MultiHeadLM",
    "MultiLMHead",
    "RewardHead",
    "RewardModel",
    "Transformer",
    "ValueHead",
    "add_lora",
    "check_head_weights",
    "completion_logps",
    "decode_step",
    "extend",
    "forward",
    "from_hf",
    "has_lora",
    "init_cache",
    "init_model",
    "last_token_index",
    "load_multihead",
    "load_reward_model",
    "load_tokenizer",
    "log_sum_sq_probs",
    "logical_axes",
    "lora",
    "lora_state",
    "merge_lora",
    "mix_heads",
    "pair_logps",
    "multi_head_token_logps",
    "prefill",
    "remove_lora",
    "save_multihead",
    "save_reward_model",
    "scan_chunks",
    "sequence_logps",
    "split_lora",
    "tiny_config",
    "to_hf",
    "token_entropy",
    "token_logps",
    "token_stats",
    "tokenizers",
]
