"""A tiny NNX language model with logical axis names, for the sharding and train-step tests.

Embedding `[V, D]` ("vocab", "embed"), `L` residual MLP blocks stored stacked
(`[L, D, F]` ("layers", "embed", "mlp"), `[L, F]` ("layers", "mlp"), `[L, F, D]`), an unembedding
`[D, V]` ("embed", "vocab") and an unnamed (replicated) final scale `[D]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignax.sharding import constrain

VOCAB, EMBED, MLP, LAYERS, SEQ = 16, 8, 16, 2, 4


def _init(seed: int, index: int, shape: tuple[int, ...], scale: float = 0.5) -> jax.Array:
    """Deterministic pseudo-random values from a sine hash.

    Not `jax.random`: on the 2-core CPU machines XLA compiles one threefry per parameter in
    about a second each; this compiles in milliseconds and is equally sharding-independent.
    """
    n = np.prod(shape, dtype=np.int64)
    x = jnp.arange(n, dtype=jnp.float32) + 1000.0 * index + 7919.0 * seed
    return scale * jnp.sin(12.9898 * x + 78.233 * jnp.cos(x)).reshape(shape)


class TinyLM(nnx.Module):
    def __init__(self, *, seed: int = 0, vocab: int = VOCAB, embed: int = EMBED,
                 mlp: int = MLP, layers: int = LAYERS):
        self.embedding = nnx.Param(_init(seed, 0, (vocab, embed)),
                                   out_sharding=("vocab", "embed"))
        self.w_up = nnx.Param(_init(seed, 1, (layers, embed, mlp)),
                              out_sharding=("layers", "embed", "mlp"))
        self.b_up = nnx.Param(_init(seed, 2, (layers, mlp), 0.05),
                              out_sharding=("layers", "mlp"))
        self.w_down = nnx.Param(_init(seed, 3, (layers, mlp, embed)),
                                out_sharding=("layers", "mlp", "embed"))
        self.unembed = nnx.Param(_init(seed, 4, (embed, vocab)),
                                 out_sharding=("embed", "vocab"))
        self.scale = nnx.Param(jnp.ones((embed,)))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """`[B, T]` int tokens -> `[B, T, V]` logits."""
        # One-hot matmul rather than a gather: partitions cleanly over a sharded table.
        one_hot = jax.nn.one_hot(tokens, self.embedding.shape[0], dtype=self.embedding.dtype)
        h = constrain(one_hot @ self.embedding[...], ("batch", "seq", "embed"))
        for i in range(self.w_up.shape[0]):
            u = jax.nn.gelu(h @ self.w_up[i] + self.b_up[i])
            u = constrain(u, ("batch", "seq", "mlp"))
            h = constrain(h + u @ self.w_down[i], ("batch", "seq", "embed"))
        return constrain((h * self.scale[...]) @ self.unembed[...], ("batch", "seq", "vocab"))


def make_model(seed: int = 0, **kwargs) -> TinyLM:
    return TinyLM(seed=seed, **kwargs)


def init_params(seed: int = 0, **kwargs):
    """`() -> params` for `init_train_state`."""
    return lambda: nnx.split(make_model(seed, **kwargs), nnx.Param)[1]


def graphdef(**kwargs):
    with nnx.use_eager_sharding(False):
        return nnx.split(nnx.eval_shape(lambda: make_model(0, **kwargs)), nnx.Param)[0]


def make_objective(gdef, *, noise: float = 0.0):
    """Mean next-token cross-entropy; `noise` adds an rng-dependent term (tests the rng)."""

    def objective(params, batch, rng, *, ref_params=None):
        logits = nnx.merge(gdef, params)(batch["inputs"])
        logps = jax.nn.log_softmax(logits.astype(jnp.float32))
        token_logps = jnp.take_along_axis(logps, batch["targets"][..., None], -1)[..., 0]
        loss = -token_logps.mean()
        metrics = {"logps/mean": token_logps.mean()}
        if noise:
            loss = loss + noise * jax.random.normal(rng, ()) * loss
        if ref_params is not None:
            ref_logits = nnx.merge(gdef, ref_params)(batch["inputs"])
            ref_logps = jax.nn.log_softmax(ref_logits.astype(jnp.float32))
            kl = (jnp.exp(logps) * (logps - ref_logps)).sum(-1).mean()
            metrics["kl/ref"] = kl
            loss = loss + 0.1 * kl
        return loss, metrics

    return objective


def make_batch(index: int, *, batch_size: int = 8, seq: int = SEQ, vocab: int = VOCAB):
    """The deterministic `index`-th batch: `{"inputs": [B, T], "targets": [B, T]}` int32."""
    tokens = np.random.default_rng(1000 + index).integers(0, vocab, (batch_size, seq + 1))
    tokens = tokens.astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def flat_params(params) -> dict[str, np.ndarray]:
    """`{path: array}` on the host (fully addressable arrays only)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def make_tx():
    """The optimizer of the step tests: AdamW, cosine decay, weight decay, clipping."""
    from alignax.train import make_optimizer

    return make_optimizer(learning_rate=1e-2, total_steps=10, warmup_steps=0,
                          weight_decay=0.01, max_grad_norm=1.0)
