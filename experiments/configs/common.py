"""Sections shared by every experiment config, in the order every config lists them."""

import ml_collections


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.algorithm = "dpo"
    # A named tiny architecture trained from scratch, or `path` = a local HF directory.
    c.model = dict(name="llama", path="", tokenizer="byte", dtype="float32",
                   param_dtype="float32", remat="none", overrides={})
    # dtype "" = as the policy ("bfloat16" halves its memory); precompute=True scores the data
    # with the reference once, caches it on disk under a fingerprint, and drops the copy.
    c.reference = dict(dtype="", precompute=False, cache_dir="")
    # `path` = a local JSONL/Parquet file; empty = the built-in arithmetic task, whose wrong
    # answers are `answer + offset` (offset 1: a systematic annotator error).
    c.data = dict(path="", eval_path="", eval_fraction=0.05, format="auto", on_error="raise",
                  task="arithmetic", num_train=4096, num_eval=256, max_operand=20,
                  error_rate=0.0, error_offsets=(1,), max_prompt_length=8,
                  max_completion_length=6, buckets=(), objectives=())
    c.loss = dict(name="sigmoid", beta=0.1)
    c.optim = dict(name="adamw", learning_rate=1e-3, warmup_steps=10, decay="cosine",
                   weight_decay=0.0, max_grad_norm=1.0)
    c.train = dict(steps=200, batch_size=32, seed=0, grad_accum=1, log_every=20,
                   eval_every=100, eval_batches=4, eval_prompts=128, logits_chunk=128,
                   export_hf=True)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.checkpoint = dict(every_steps=100, keep=2)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same code path in seconds on CPU."""
    c.data.num_train, c.data.num_eval = 64, 16
    c.train.steps, c.train.batch_size = 4, 8
    c.train.log_every, c.train.eval_every, c.train.eval_batches = 2, 4, 1
    c.train.eval_prompts = 8
    c.checkpoint.every_steps = 2
    return c


def online(algorithm: str, loss: dict, **rollout) -> ml_collections.ConfigDict:
    """`base()` with the online sections (`rollout`, `reward`) for PPO / GRPO / RLOO / GRAO.

    `rollout`: G samples per prompt (`num_generations`), temperature / top-k / top-p, stop
    tokens and max new tokens; `num_epochs` x `num_minibatches` update steps per rollout batch.
    `reward`: verifiable `functions` with `weights`, a reward model in `model_path` (weight
    `model_weight`), and length / over-long / missing-EOS shaping.
    `train.batch_size` is the number of prompts per rollout batch.
    """
    c = base()
    c.algorithm = algorithm
    c.loss = loss
    c.rollout = dict(num_generations=8, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6,
                     stop_tokens=(), num_epochs=1, num_minibatches=1)
    c.rollout.update(rollout)
    c.reward = dict(functions=("arithmetic_correct",), weights=(1.0,), model_path="",
                    model_weight=1.0, length_penalty=0.0, overlong_buffer=0,
                    missing_eos_penalty=0.0)
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 5
    c.train.steps, c.train.batch_size = 60, 32
    c.train.eval_every, c.train.log_every, c.train.eval_prompts = 20, 10, 256
    c.checkpoint.every_steps = 20
    return c


def online_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The online code path in seconds on CPU (8 prompts x 4 samples, 4 steps)."""
    smoke(c)
    c.rollout.num_generations = 4
    c.train.eval_prompts = 16
    return c
