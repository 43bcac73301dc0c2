"""Tiny random Hugging Face models (torch CPU) for the parity tests."""

import numpy as np

FAMILIES = ("llama", "llama3", "qwen2", "qwen3", "mistral")
VOCAB = 160


def hf_config(family: str, **overrides):
    """A transformers config for a 2-layer, E=32 model of `family`."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6)
    if family == "llama":  # head_dim 16 != hidden/heads: the configurable head_dim path
        cfg = transformers.LlamaConfig(**common, head_dim=16, **overrides)
    elif family == "llama3":  # wavelengths on all three sides of the llama3 smoothing band
        cfg = transformers.LlamaConfig(**common, head_dim=16, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 256}, **overrides)
    elif family == "qwen2":  # q/k/v biases, tied embeddings
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True, **overrides)
    elif family == "qwen3":  # q/k norms
        cfg = transformers.Qwen3Config(**common, head_dim=16, **overrides)
    elif family == "mistral":  # window 4 < sequence length: the sliding-window mask matters
        cfg = transformers.MistralConfig(**common, head_dim=8, sliding_window=4, **overrides)
    else:
        raise ValueError(family)
    return cfg


def make_hf_model(family: str, seed: int = 0, **overrides):
    """A transformers causal LM with O(1) random weights (so logit errors are meaningful)."""
    import torch
    import transformers

    cfg = hf_config(family, **overrides)
    cls = {"llama": transformers.LlamaForCausalLM, "llama3": transformers.LlamaForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
           "mistral": transformers.MistralForCausalLM}[family]
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def hf_logits(model, ids, mask=None) -> np.ndarray:
    import torch

    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(np.asarray(mask))}
        return model(torch.tensor(np.asarray(ids)), **kw).logits.float().numpy()
