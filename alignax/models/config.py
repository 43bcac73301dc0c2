"""Decoder configuration for the Llama, Qwen2, Qwen3 and Mistral families.

`ModelConfig` is a frozen, hashable dataclass (it is static metadata of the NNX module and of
jitted functions). `ModelConfig.from_hf` reads a Hugging Face `config.json` dict, old style
(`rope_theta` + `rope_scaling`) or new style (`rope_parameters`); `to_hf` writes one that both
old and new `transformers` versions read. `tiny_config(name)` builds small models for tests.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

# HF architecture name -> family; the family decides the attention biases and q/k norms.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
}
FAMILY_TO_ARCHITECTURE = {v: k for k, v in ARCHITECTURES.items()}
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def _freeze(value):
    """dict/list -> sorted tuples, so the config stays hashable."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer.

    Attributes:
      family: "llama", "qwen2", "qwen3" or "mistral" (picks the HF architecture on export).
      vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim:
        sizes (V, E, F, L, N query heads, K key/value heads, D per head).
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: RoPE base.
      rope_scaling: `None` or the HF rope-scaling dict (rope_type "linear", "llama3" or
        "yarn"), stored as sorted `(key, value)` pairs; read it with `rope_scaling_dict`.
      max_position_embeddings: as in HF (used by yarn and written back on export).
      tie_word_embeddings: LM head is the transposed embedding.
      qkv_bias / o_bias: biases on the q/k/v projections (Qwen2, or `attention_bias`) and on
        the output projection (`attention_bias` in Llama/Qwen3).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
      sliding_window: attention window W (a query sees keys at most W-1 slots back) or None.
      sliding_layers: per layer, whether it uses the window; None = every layer (Mistral).
      bos_token_id, eos_token_id, pad_token_id: special ids (eos may be a tuple).
      dtype: compute dtype (activations, matmul inputs). param_dtype: storage dtype.
      remat: "none", "full" (recompute each layer) or "save_dots" (keep matmul outputs).
      attention_impl: "auto" (cuDNN flash on GPU when shapes allow, else XLA), "xla", "cudnn".
    """

    family: str = "llama"
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    bos_token_id: int | None = None
    eos_token_id: Any = None
    pad_token_id: int | None = None
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    remat: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("dtype", _dtype_name(self.dtype))
        set_("param_dtype", _dtype_name(self.param_dtype))
        set_("rope_scaling", _freeze(self.rope_scaling) if self.rope_scaling else None)
        set_("eos_token_id", _freeze(self.eos_token_id))
        if self.sliding_layers is not None:
            set_("sliding_layers", tuple(bool(x) for x in self.sliding_layers))
        if self.family not in FAMILY_TO_ARCHITECTURE:
            raise ValueError(f"unknown family {self.family!r}; supported: "
                             f"{sorted(FAMILY_TO_ARCHITECTURE)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; choose one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; "
                             f"choose one of {ATTENTION_IMPLS}")
        rope_type = self.rope_scaling_dict.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {ROPE_TYPES}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ValueError("sliding_layers needs one entry per layer")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def uses_window(self) -> bool:
        return self.sliding_window is not None and (
            self.sliding_layers is None or any(self.sliding_layers))

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
        """Builds a config from a HF `config.json` dict; `overrides` set any field."""
        archs = hf.get("architectures") or []
        family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
        if family is None and not archs and hf.get("model_type") in FAMILY_TO_ARCHITECTURE:
            family = hf["model_type"]
        if family is None:
            raise ValueError(
                f"unsupported architecture {archs or hf.get('model_type')!r}; alignax.models "
                f"supports {sorted(ARCHITECTURES)}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={hf['hidden_act']!r} is not supported (only silu)")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        if any(isinstance(v, dict) for v in rope.values()):
            raise ValueError("per-layer-type rope_parameters are not supported")
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        if "type" in rope:
            rope.setdefault("rope_type", rope.pop("type"))
        rope_type = rope.get("rope_type", "default")
        if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        rope.pop("partial_rotary_factor", None)
        if rope_type in ("llama3", "yarn"):
            rope.setdefault("original_max_position_embeddings",
                            hf.get("original_max_position_embeddings",
                                   hf.get("max_position_embeddings")))
        attention_bias = bool(hf.get("attention_bias", False))
        num_layers = hf["num_hidden_layers"]
        window, sliding_layers = _sliding_from_hf(hf, family, num_layers)
        kwargs = dict(
            family=family,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope if rope_type != "default" else None,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=family != "qwen2" and attention_bias,
            qk_norm=family == "qwen3",
            sliding_window=window,
            sliding_layers=sliding_layers,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that old and new `transformers` load identically."""
        rope = self.rope_scaling_dict
        eos = self.eos_token_id
        hf = {
            "architectures": [FAMILY_TO_ARCHITECTURE[self.family]],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            # Old (<5) transformers read rope_theta/rope_scaling; new ones rope_parameters.
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(rope) if rope else None,
            "rope_parameters": {"rope_type": "default", **rope, "rope_theta": self.rope_theta},
        }
        if self.family != "qwen2":
            if self.qkv_bias != self.o_bias:
                raise ValueError(f"{self.family} cannot express qkv_bias != o_bias in HF")
            hf["attention_bias"] = self.qkv_bias
        elif not self.qkv_bias or self.o_bias:
            raise ValueError("qwen2 always has q/k/v biases and no output bias")
        if self.family in ("qwen2", "qwen3"):
            layers = self.sliding_layers or (True,) * self.num_layers
            uses = self.sliding_window is not None and any(layers)
            hf["use_sliding_window"] = uses
            hf["sliding_window"] = self.sliding_window if uses else None
            # Old transformers slide on layers >= max_window_layers; new ones read layer_types.
            first = next((i for i, s in enumerate(layers) if s), self.num_layers)
            hf["max_window_layers"] = first
            hf["layer_types"] = ["sliding_attention" if uses and s else "full_attention"
                                 for s in layers]
        elif self.family == "mistral":
            if self.sliding_layers is not None and not all(self.sliding_layers):
                raise ValueError("mistral applies its sliding window to every layer")
            hf["sliding_window"] = self.sliding_window
        elif self.sliding_window is not None:
            raise ValueError("llama has no sliding window")
        return hf

    def to_json(self) -> str:
        return json.dumps(self.to_hf(), indent=2, sort_keys=True)


def _sliding_from_hf(hf, family, num_layers):
    window = hf.get("sliding_window")
    if family in ("llama",):
        return None, None
    if family == "mistral":
        return window, None
    if "layer_types" in hf and hf["layer_types"] is not None:
        layers = tuple(t == "sliding_attention" for t in hf["layer_types"])
    elif hf.get("use_sliding_window"):
        first = hf.get("max_window_layers", num_layers)
        layers = tuple(i >= first for i in range(num_layers))
    else:
        layers = (False,) * num_layers
    if not hf.get("use_sliding_window", any(layers)) or window is None or not any(layers):
        return None, None
    return window, layers


_TINY = {
    "llama": dict(family="llama"),
    "llama3": dict(family="llama", rope_theta=500000.0, max_position_embeddings=256,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 32}),
    "qwen2": dict(family="qwen2", qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6),
    "qwen3": dict(family="qwen3", qk_norm=True, tie_word_embeddings=True, rope_theta=1e6),
    "mistral": dict(family="mistral", sliding_window=8),
}


def tiny_config(name: str = "llama", **overrides) -> ModelConfig:
    """A small config (E=64, 2 layers, V=256 bytes+specials fit) for tests and demos.

    Args:
      name: "llama", "llama3" (Llama 3 rope scaling), "qwen2", "qwen3" or "mistral".
      **overrides: any `ModelConfig` field.
    """
    if name not in _TINY:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(_TINY)}")
    kwargs = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, bos_token_id=257,
                  eos_token_id=258, pad_token_id=256)
    kwargs.update(_TINY[name])
    kwargs.update(overrides)
    return ModelConfig(**kwargs)
