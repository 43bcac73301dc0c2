"""`alignax sample`: what the command prints, one JSON line per completion (plain sampling,
MAH-DPO head mixtures, best-of-N and guided decoding: `alignax.decoding`).

The argument parser lives in `alignax.cli`; `sample_lines(args)` takes its parsed arguments.
"""

from __future__ import annotations

import os


def _read_prompts(path: str) -> list:
    """Prompts of a file: lines of text, or JSONL records with `prompt` (text) or `messages`
    (a list of chat messages)."""
    import json

    if not os.path.exists(path):
        raise FileNotFoundError(f"--prompts-file {path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not path.endswith(".jsonl"):
        return [x for x in lines if x.strip()]
    out = []
    for i, x in enumerate(lines, 1):
        if not x.strip():
            continue
        try:
            rec = json.loads(x)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if isinstance(rec, dict) and isinstance(rec.get("messages"), list):
            out.append(rec["messages"])
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str | list):
            out.append(rec["prompt"])
        else:
            raise ValueError(f"{path}:{i}: field 'prompt': expected a string (or 'messages': "
                             "a list of chat messages)")
    return out


def _prompt_text(tokenizer, prompt, chat: bool) -> tuple[str, bool]:
    """`(text, already has its special tokens)`: chat prompts rendered by the chat template
    with the assistant's turn opened."""
    if isinstance(prompt, list) or chat:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True), True
    return prompt, False


def sample_lines(args):
    """Yields the JSON output lines of `alignax sample` (parsed `args`)."""
    import json

    from alignax import models
    from alignax.models.multihead import HEADS_FILE, HEADS_META
    from alignax.sampling import decode_completions, generate

    path = args.model
    if os.path.exists(os.path.join(path, "hf", "config.json")):
        path = os.path.join(path, "hf")  # a train workdir (its config.json is the run's)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {args.model}: no such directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--model {args.model}: no config.json (not an HF export nor "
                                "a train workdir with an hf/ export)")
    tok_path = args.tokenizer or (path if os.path.exists(os.path.join(path, "tokenizer.json"))
                                  else "byte")
    tokenizer = models.load_tokenizer(tok_path)
    prompts = list(args.prompt) + (_read_prompts(args.prompts_file) if args.prompts_file
                                   else [])
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    method = getattr(args, "decoding", "") or ("best_of_n" if getattr(args, "best_of", 0)
                                                 else "sample")
    if getattr(args, "temperature", None) is None:
        args.temperature = 0.0 if method in ("args", "deal", "tq") else 1.0
    for name, ok in (("--max-new-tokens", args.max_new_tokens >= 1),
                     ("--num-samples", args.num_samples >= 1),
                     ("--batch-size", args.batch_size >= 1),
                     ("--slots", getattr(args, "slots", 0) >= 0),
                     ("--temperature", args.temperature >= 0),
                     ("--top-k", args.top_k >= 0), ("--top-p", 0 < args.top_p <= 1)):
        if not ok:
            raise ValueError(f"{name}: out of range")
    if method != "sample" and getattr(args, "slots", 0):
        raise ValueError(f"--slots: continuous batching samples plain completions; "
                         f"{method} decoding does not take it")
    kw = dict(dtype=args.dtype or None)
    weights = None
    if os.path.exists(os.path.join(path, HEADS_FILE)):
        model, names = models.load_multihead(path, **kw)
        if args.head_weights:
            try:
                raw = [float(x) for x in args.head_weights.split(",")]
            except ValueError:
                raise ValueError(f"--head-weights: expected comma-separated numbers, got "
                                 f"{args.head_weights!r}") from None
        else:
            with open(os.path.join(path, HEADS_META), encoding="utf-8") as f:
                raw = json.load(f)["export_weights"]
        heads = f" ({', '.join(names)})" if names else ""
        weights = models.check_head_weights(
            raw, model.num_heads, field=f"--head-weights for {model.num_heads} heads{heads}")
    else:
        if args.head_weights:
            raise ValueError(f"--head-weights: {path} is a single-head model (no "
                             f"{HEADS_FILE}); drop --head-weights or use a MAH-DPO export")
        model = models.from_hf(path, **kw)
    rendered = [_prompt_text(tokenizer, p, args.chat) for p in prompts]
    ids = [tokenizer.encode(t, add_special_tokens=not chat) for t, chat in rendered]
    if any(not x for x in ids):
        raise ValueError("an empty prompt (no tokens); every prompt needs text")
    stops = (int(tokenizer.eos_id),)
    if method == "best_of_n":
        yield from _best_of_n_lines(args, model, tokenizer, prompts, ids, weights)
        return
    if method != "sample":
        yield from _guided_lines(method, args, model, tokenizer, prompts, ids, weights)
        return
    out = generate(model, ids, max_new_tokens=args.max_new_tokens, eos_id=tokenizer.eos_id,
                   pad_id=tokenizer.pad_id, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, num_samples=args.num_samples, stop_ids=stops,
                   head_weights=weights, seed=args.seed,
                   batch_size=min(args.batch_size, len(prompts)),
                   slots=getattr(args, "slots", 0))
    texts = decode_completions(tokenizer, out.tokens, out.mask, stop_ids=stops)
    for r, text in enumerate(texts):
        row = {"prompt": prompts[r // args.num_samples], "sample": r % args.num_samples,
               "completion": text}
        if weights is not None:
            row["head_weights"] = [round(float(w), 6) for w in weights]
        yield json.dumps(row, ensure_ascii=False)


def _best_of_n_lines(args, model, tokenizer, prompts, ids, weights):
    """`alignax sample --best-of N`: one JSON line per prompt (see `alignax.decoding`)."""
    import json

    from alignax import decoding, models, rewards
    from alignax.sampling import decode_completions

    scorers = [f for f in ("verifier", "reward_model", "reference") if getattr(args, f)]
    if len(scorers) != 1:
        raise ValueError("--best-of needs exactly one scorer: --verifier, --reward-model or "
                         f"--reference (got {len(scorers)})")
    if weights is not None or args.num_samples != 1:
        raise ValueError("--best-of: single-head models and --num-samples 1 only")
    if args.best_of < 1:
        raise ValueError("--best-of: out of range")
    if args.verifier:
        scorer = decoding.verifier_scorer(rewards.get_reward_function(args.verifier), prompts)
    elif args.reward_model:
        scorer = decoding.reward_model_scorer(*rewards.load_scorer(
            _export_dir(args.reward_model, "--reward-model")))
    else:
        reference = models.from_hf(_export_dir(args.reference, "--reference"),
                                   dtype=args.dtype or None)
        scorer = decoding.implicit_reward_scorer(model, reference, args.beta)
    out = decoding.best_of_n(model, ids, n=args.best_of, scorer=scorer, tokenizer=tokenizer,
                             max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             batch_size=min(args.batch_size, len(prompts)))
    texts = decode_completions(tokenizer, out.tokens, out.mask,
                               stop_ids=(int(tokenizer.eos_id),))
    for i, text in enumerate(texts):
        yield json.dumps({"prompt": prompts[i], "completion": text,
                          "score": float(out.scores[i, out.chosen[i]]),
                          "candidate": int(out.chosen[i]),
                          "scores": [round(float(x), 6) for x in out.scores[i]],
                          "forward_tokens_per_output_token": round(
                              out.forward_tokens_per_output_token, 3)}, ensure_ascii=False)


def _guided_lines(method, args, model, tokenizer, prompts, ids, weights):
    """`alignax sample --decoding args|deal|tq`: one JSON line per prompt."""
    import json

    from alignax import decoding, models, rewards
    from alignax.sampling import decode_completions

    if weights is not None or args.num_samples != 1:
        raise ValueError(f"--decoding {method}: single-head models and --num-samples 1 only")
    scorers = [f for f in ("verifier", "reward_model", "reference") if getattr(args, f)]
    if len(scorers) != 1:
        raise ValueError(f"--decoding {method} needs exactly one scorer: --verifier, "
                         f"--reward-model or --reference with --guide-policy (got "
                         f"{len(scorers)})")
    load = lambda path, flag: models.from_hf(_export_dir(path, flag), dtype=args.dtype or None)
    k = args.candidates or (10 if method == "args" else 4)
    if method == "args":
        search = decoding.args_search(candidates=k, weight=args.weight,
                                      temperature=args.temperature)
    elif method == "deal":
        search = decoding.deal_search(candidates=k, beams=args.beams, weight=args.weight,
                                      lookahead=4 if args.lookahead < 0 else args.lookahead)
    else:
        if not args.baseline:
            raise ValueError("--decoding tq needs --baseline DIR (the aligned model rho_BL)")
        search = decoding.Search(
            candidates=k, weight=args.weight, temperature=args.temperature,
            lookahead=args.max_new_tokens if args.lookahead < 0 else args.lookahead,
            rollouts=args.rollouts, rollout_temperature=args.rollout_temperature,
            indirect_beta=args.indirect_beta)
    if args.verifier:
        scorer = decoding.verifier_sequence_scorer(
            rewards.get_reward_function(args.verifier), prompts, tokenizer)
    elif args.reward_model:
        scorer = decoding.reward_model_sequence_scorer(*rewards.load_scorer(
            _export_dir(args.reward_model, "--reward-model")))
    else:
        if not args.guide_policy:
            raise ValueError(f"--decoding {method} --reference: give --guide-policy DIR (the "
                             "DPO policy whose implicit reward guides the search)")
        policy, reference = (load(args.guide_policy, "--guide-policy"),
                             load(args.reference, "--reference"))
        scorer = (decoding.ImplicitGuide(policy, reference, args.beta) if method == "args"
                  else decoding.implicit_sequence_scorer(policy, reference, args.beta))
    baseline_scorer = None
    if args.baseline_reward_model:
        if method != "tq":
            raise ValueError("--baseline-reward-model: only with --decoding tq")
        baseline_scorer = decoding.reward_model_sequence_scorer(*rewards.load_scorer(
            _export_dir(args.baseline_reward_model, "--baseline-reward-model")))
    if method != "tq" and args.baseline:
        raise ValueError("--baseline: only with --decoding tq")
    out = decoding.guided_decode(
        model, ids, search=search, scorer=scorer, tokenizer=tokenizer,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
        rollout_model=load(args.baseline, "--baseline") if method == "tq" else None,
        baseline_scorer=baseline_scorer, batch_size=min(args.batch_size, len(prompts)))
    texts = decode_completions(tokenizer, out.tokens, out.mask,
                               stop_ids=(int(tokenizer.eos_id),))
    for i, text in enumerate(texts):
        yield json.dumps({"prompt": prompts[i], "completion": text, "decoding": method,
                          "score": float(out.score[i]), "value": float(out.value[i]),
                          "forward_tokens_per_output_token": round(
                              out.forward_tokens_per_output_token, 3)}, ensure_ascii=False)


def _export_dir(path: str, flag: str) -> str:
    """An HF export directory from a directory or a train workdir (its hf/)."""
    if os.path.exists(os.path.join(path, "hf", "config.json")):
        return os.path.join(path, "hf")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{flag} {path}: not an HF export nor a train workdir")
    return path
