"""Hugging Face checkpoints: load a local safetensors directory, write one back.

Only safetensors are read (single file, or shards with `model.safetensors.index.json`); pickle
checkpoints (`pytorch_model.bin`) are refused. `safetensors` is the `[hf]` extra and is
imported inside the functions that need it.

Layout: HF stores linear weights `[out, in]`; alignax keeps q `[E, N, D]`, k/v `[E, K, D]`,
o `[N, D, E]`, MLP `[E, F]`/`[F, E]`, LM head `[E, V]`, each layer's parameters stacked on a
leading `L` axis.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.models import lora
from alignax.models.config import ModelConfig
from alignax.models.transformer import Transformer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters write that carry no parameters.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class MissingTensorsError(KeyError):
    """The checkpoint lacks tensors the architecture needs (the message lists them)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: tuple[str, ...]  # attribute path in the NNX model
    hf_name: str  # HF tensor name; "{i}" = layer index
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _entries(cfg: ModelConfig) -> list[_Entry]:
    e, n, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    same = lambda x: x
    transpose = lambda x: x.T

    def heads_in(h):  # [h*D, E] -> [E, h, D]
        return (lambda x: x.reshape(h, d, e).transpose(2, 0, 1),
                lambda x: x.transpose(1, 2, 0).reshape(h * d, e))

    def heads_bias(h):  # [h*D] -> [h, D]
        return (lambda x: x.reshape(h, d), lambda x: x.reshape(h * d))

    o_in = (lambda x: x.reshape(e, n, d).transpose(1, 2, 0),  # [E, N*D] -> [N, D, E]
            lambda x: x.transpose(2, 0, 1).reshape(e, n * d))
    pre = "model.layers.{i}."
    out = [
        _Entry(("embed",), "model.embed_tokens.weight", same, same),
        _Entry(("norm", "scale"), "model.norm.weight", same, same),
        _Entry(("layers", "input_norm", "scale"), pre + "input_layernorm.weight", same, same),
        _Entry(("layers", "post_attn_norm", "scale"), pre + "post_attention_layernorm.weight",
               same, same),
        _Entry(("layers", "attn", "q_proj"), pre + "self_attn.q_proj.weight", *heads_in(n)),
        _Entry(("layers", "attn", "k_proj"), pre + "self_attn.k_proj.weight", *heads_in(k)),
        _Entry(("layers", "attn", "v_proj"), pre + "self_attn.v_proj.weight", *heads_in(k)),
        _Entry(("layers", "attn", "o_proj"), pre + "self_attn.o_proj.weight", *o_in),
        _Entry(("layers", "mlp", "gate"), pre + "mlp.gate_proj.weight", transpose, transpose),
        _Entry(("layers", "mlp", "up"), pre + "mlp.up_proj.weight", transpose, transpose),
        _Entry(("layers", "mlp", "down"), pre + "mlp.down_proj.weight", transpose, transpose),
    ]
    if cfg.qkv_bias:
        out += [
            _Entry(("layers", "attn", "q_bias"), pre + "self_attn.q_proj.bias", *heads_bias(n)),
            _Entry(("layers", "attn", "k_bias"), pre + "self_attn.k_proj.bias", *heads_bias(k)),
            _Entry(("layers", "attn", "v_bias"), pre + "self_attn.v_proj.bias", *heads_bias(k)),
        ]
    if cfg.o_bias:
        out.append(_Entry(("layers", "attn", "o_bias"), pre + "self_attn.o_proj.bias",
                          same, same))
    if cfg.qk_norm:
        out += [
            _Entry(("layers", "attn", "q_norm", "scale"), pre + "self_attn.q_norm.weight",
                   same, same),
            _Entry(("layers", "attn", "k_norm", "scale"), pre + "self_attn.k_norm.weight",
                   same, same),
        ]
    if not cfg.tie_word_embeddings:
        out.append(_Entry(("lm_head",), "lm_head.weight", transpose, transpose))
    return out


def _safetensors():
    try:
        import safetensors  # noqa: F401
        from safetensors import safe_open
        from safetensors.numpy import save_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing HF checkpoints needs the [hf] extra: "
                          "pip install 'alignax[hf]' (safetensors)") from e
    return safe_open, save_file


class _Reader:
    """name -> file map of a checkpoint directory; tensors are read one at a time."""

    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        index = directory / INDEX_FILE
        safe_open, _ = _safetensors()
        self._safe_open = safe_open
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / f for name, f in weight_map.items()}
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                pickles = sorted(p.name for p in directory.glob("*.bin"))
                hint = (f" (found {pickles}: pickle checkpoints are never loaded; convert them "
                        "with transformers' save_pretrained(safe_serialization=True))"
                        if pickles else "")
                raise FileNotFoundError(f"no *.safetensors in {directory}{hint}")
            self.files = {}
            for f in files:
                with safe_open(str(f), framework="numpy") as h:
                    self.files.update({name: f for name in h.keys()})
        self._handles = {}

    def close(self):
        self._handles.clear()  # safe_open handles unmap their file when dropped

    def __contains__(self, name):
        return name in self.files

    def get(self, name: str) -> np.ndarray:
        f = self.files[name]
        if f not in self._handles:
            if not f.exists():
                raise FileNotFoundError(f"{f} (named in {INDEX_FILE}) does not exist")
            self._handles[f] = self._safe_open(str(f), framework="numpy")
        return self._handles[f].get_tensor(name)


def _as_dtype(name):
    return None if name is None else jnp.dtype(name)


def from_hf(path: str | os.PathLike, *, dtype=None, param_dtype=None, **overrides) -> Transformer:
    """Loads a local HF checkpoint directory into a `Transformer`.

    Args:
      path: directory with `config.json` and `model.safetensors` (or shards + index).
      dtype: compute dtype (default float32).
      param_dtype: parameter storage dtype (default float32; bf16 for all-bf16).
      **overrides: other `ModelConfig` fields, e.g. `remat="full"`, `attention_impl="xla"`.
    Returns:
      The model, parameters exactly as stored (cast to `param_dtype`).
    Raises:
      ValueError: unsupported architecture or unexpected tensors (listed).
      MissingTensorsError: tensors the architecture needs are absent (listed).
    """
    directory = pathlib.Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: not a HF model directory")
    hf_config = json.loads(config_path.read_text())
    if dtype is not None:
        overrides["dtype"] = _as_dtype(dtype)
    if param_dtype is not None:
        overrides["param_dtype"] = _as_dtype(param_dtype)
    config = ModelConfig.from_hf(hf_config, **overrides)
    reader = _Reader(directory)
    try:
        return _load(directory, hf_config, config, reader)
    finally:
        reader.close()


def _load(directory, hf_config, config: ModelConfig, reader: _Reader) -> Transformer:
    entries = _entries(config)
    layer_ids = range(config.num_layers)
    names = {en.path: ([en.hf_name.format(i=i) for i in layer_ids] if en.per_layer
                       else [en.hf_name]) for en in entries}
    missing = [n for ns in names.values() for n in ns if n not in reader]
    if missing:
        shown = missing[:64] + ([f"... and {len(missing) - 64} more"] if len(missing) > 64 else [])
        raise MissingTensorsError(
            f"{directory} lacks {len(missing)} tensor(s) that {config.family} "
            f"({hf_config.get('architectures')}) needs: {shown}")
    used = {n for ns in names.values() for n in ns}
    if config.tie_word_embeddings:
        used.add("lm_head.weight")  # tied: HF ignores a stored copy as well
    unexpected = sorted(n for n in reader.files if n not in used
                        and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{directory} has tensors that config.json does not explain "
                         f"(unsupported features?): {unexpected}")

    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    wdtype = config.weight_dtype
    values = {}
    for en in entries:
        arrays = []
        for n in names[en.path]:
            raw = reader.get(n)
            try:
                arrays.append(en.to_ours(raw))
            except ValueError as e:  # a reshape that does not fit the config's sizes
                raise ValueError(f"{n}: shape {raw.shape} does not fit config.json "
                                 f"({config.num_heads=}, {config.num_kv_heads=}, "
                                 f"{config.head_dim=}, {config.hidden_size=})") from e
        value = np.stack(arrays) if en.per_layer else arrays[0]
        values[en.path] = jnp.asarray(value.astype(wdtype, copy=False))

    def fill(path, variable):
        key = tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
        if key not in values:
            raise KeyError(f"no checkpoint entry for model parameter {'.'.join(key)}")
        value, want = values[key], variable.get_value()
        if value.shape != want.shape:
            raise ValueError(f"{'.'.join(key)}: checkpoint shape {value.shape}, "
                             f"model expects {want.shape}")
        return variable.replace(value)

    state = jax.tree_util.tree_map_with_path(fill, state,
                                             is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def to_hf(model: Transformer, path: str | os.PathLike, *, dtype=None,
          max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes `model` as a HF checkpoint (`config.json` + safetensors) that transformers loads.

    Args:
      model: a `Transformer`; LoRA adapters, if any, are merged into the weights first
        (`lora.merge_lora`), so the checkpoint is a plain model any HF loader reads.
      path: output directory (created).
      dtype: tensor dtype on disk; default the model's `param_dtype`.
      max_shard_bytes: above this size, tensors go to several files plus an index.
    Returns:
      The names of the files written.
    """
    if lora.has_lora(model):
        model = lora.merge_lora(model)
    _, save_file = _safetensors()
    config: ModelConfig = model.config
    out_dtype = jnp.dtype(dtype or config.param_dtype)
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for en in _entries(config):
        obj = model
        for attr in en.path:
            obj = getattr(obj, attr)
        value = np.asarray(jax.device_get(obj.get_value())).astype(out_dtype)
        if en.per_layer:
            for i in range(config.num_layers):
                tensors[en.hf_name.format(i=i)] = np.ascontiguousarray(en.to_hf(value[i]))
        else:
            tensors[en.hf_name] = np.ascontiguousarray(en.to_hf(value))
    shards, current, size = [], {}, 0
    for name, value in tensors.items():
        if current and size + value.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += value.nbytes
    shards.append(current)
    written = []
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata={"format": "pt"})
        written.append(SINGLE_FILE)
    else:
        weight_map = {}
        for j, shard in enumerate(shards):
            fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
            written.append(fname)
        total = sum(v.nbytes for v in tensors.values())
        (directory / INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        written.append(INDEX_FILE)
    hf = config.to_hf()
    hf["torch_dtype"] = hf["dtype"] = out_dtype.name  # old / new transformers key
    (directory / CONFIG_FILE).write_text(json.dumps(hf, indent=2, sort_keys=True))
    written.append(CONFIG_FILE)
    return written
