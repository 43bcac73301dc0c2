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
