"""`alignax` command line.

  alignax train --config PATH[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]
  alignax sample --model DIR (--prompt TEXT ... | --prompts-file FILE) [--chat]
                 [--head-weights 0.7,0.3]
                 [--best-of N (--verifier NAME | --reward-model DIR | --reference DIR)]
                 [--decoding args|deal|tq (--verifier | --reward-model | --reference
                  --guide-policy DIR) [--candidates K --weight W --beams B --lookahead D
                  --baseline DIR --rollouts M --baseline-reward-model DIR]]
  alignax eval --model DIR [--model DIR ...] [--data PAIRS --reference DIR] [--json PATH]
  alignax convert --workdir DIR [--step N] --out DIR
  alignax compare --config PATH[:VARIANT] [--config ...] --seeds N --workdir DIR
                  [--metric eval_after.task_accuracy] [--set KEY=VALUE ...]
  alignax plan --config PATH[:VARIANT] --devices N [--mesh data=..,fsdp=..,tensor=..]
               [--shape llama3-8b] [--device h100|v5e|v5p|... | --device-memory-gib M]
  alignax demo [--workdir DIR]
  alignax --version

A bad config or bad data ends with exit status 2 and one line naming the field, file and line;
a run stopped by a NaN loss with status 3; a bug in alignax with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback


def deliberate(error: BaseException) -> bool:
    """Whether `error` is a message alignax meant for the user: raised by a `raise` statement
    in alignax's own code (a config check, a data check, a missing file), rather than an
    internal failure (then the traceback is what a bug report needs)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    last = frames[-1]
    package = os.path.dirname(os.path.abspath(__file__))
    return (os.path.abspath(last.filename).startswith(package)
            and (last.line or "").lstrip().startswith("raise"))


def _fail(message: str, code: int = 2, hint: str = "") -> int:
    print(f"alignax: error: {message}", file=sys.stderr)
    if hint:
        print(f"alignax: hint: {hint}", file=sys.stderr)
    return code


TRAIN_HELP = """Trains as the config says, in WORKDIR (resuming there from its latest checkpoint).

Any config field can be overridden: --config.KEY=VALUE, VALUE a Python literal or a bare
string, e.g. --config.loss.name=ipo --config.train.steps=500 --config.model.path=DIR
--config.data.path=pairs.jsonl. Every field, its default and its meaning: alignax/config.py;
each algorithm's loss keywords: alignax/algorithms/__init__.py.

Several processes (a TPU pod, a SLURM job, or local processes): run the same command in
every process. On a TPU pod, under `srun`, Open MPI or with JAX_COORDINATOR_ADDRESS set,
jax.distributed starts from the environment; elsewhere give --coordinator HOST:PORT
--num-processes N --process-id I (docs/scale.md)."""


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignax train", description=TRAIN_HELP,
        usage="alignax train --config PATH[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="PATH[:VARIANT], e.g. "
                        "experiments/configs/dpo.py:smoke")
    parser.add_argument("--workdir", required=True, help="the run's directory")
    parser.add_argument("--coordinator", default="",
                        help="multi-process: process 0's HOST:PORT (jax.distributed)")
    parser.add_argument("--num-processes", type=int, default=0)
    parser.add_argument("--process-id", type=int, default=-1)
    parser.add_argument("--heartbeat-timeout", type=int, default=0,
                        help="multi-process: seconds after which the others stop when a "
                             "process died (0 = JAX's default, 100)")
    args, rest = parser.parse_known_args(argv)
    explicit = (bool(args.coordinator), args.num_processes > 0, args.process_id >= 0)
    if any(explicit) and not all(explicit):
        return _fail("--coordinator, --num-processes and --process-id go together")
    if all(explicit) and not 0 <= args.process_id < args.num_processes:
        return _fail(f"--process-id {args.process_id}: out of range for --num-processes "
                     f"{args.num_processes}")
    from alignax import distributed

    if all(explicit):
        distributed.initialize_distributed(coordinator_address=args.coordinator,
                                           num_processes=args.num_processes,
                                           process_id=args.process_id,
                                           heartbeat_timeout_seconds=args.heartbeat_timeout)
    else:  # a pod / SLURM / MPI environment, else nothing
        distributed.initialize_distributed(heartbeat_timeout_seconds=args.heartbeat_timeout)
    from alignax import algorithms, config
    from alignax.data import DataError
    from alignax.data.errors import SKIP_HINT
    from alignax.train.runner import TrainingError

    try:
        cfg = config.load_config(args.config)
        config.apply_overrides(cfg, rest)
        summary = algorithms.run(cfg, args.workdir, source=args.config)
    except config.ConfigError as e:
        return _fail(str(e))
    except DataError as e:
        return _fail(str(e), hint=SKIP_HINT if e.skippable else "")
    except TrainingError as e:
        return _fail(str(e), code=3)
    except (ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(f"{args.config}: {e}")
    if "preempted_at" in summary:
        return 0
    line = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in summary.items() if not isinstance(v, dict | list))
    print(f"alignax: done: {line}")
    for key in ("eval_before", "eval_after"):
        if summary.get(key):
            print(f"  {key}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(
                summary[key].items())))
    print(f"  workdir: {os.path.abspath(args.workdir)}")
    return 0


def _sample(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignax sample",
        description="Sample completions from an HF export (`WORKDIR/hf`), or from a MAH-DPO "
                    "export with its heads mixed by --head-weights. Prints one JSON line per "
                    "completion: prompt, sample, completion.")
    parser.add_argument("--model", required=True,
                        help="HF model directory, or a train WORKDIR (its hf/ is used)")
    parser.add_argument("--tokenizer", default="",
                        help="'byte' or a directory with tokenizer.json (default: the model "
                             "directory if it has one, else 'byte')")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts-file", default="",
                        help="one prompt per line, or .jsonl records with a 'prompt' (text) or "
                             "'messages' (a chat) field")
    parser.add_argument("--chat", action="store_true",
                        help="render each --prompt as a user message with the tokenizer's chat "
                             "template (the assistant's turn is generated)")
    parser.add_argument("--head-weights", default="",
                        help="multi-head exports: comma-separated weights over the heads, "
                             "e.g. 0.7,0.3 (default: the export weights in heads/heads.json)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default: 1 when sampling, 0 for --decoding "
                             "args / deal / tq: keep the best-scoring candidate)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per sampler call")
    parser.add_argument("--slots", type=int, default=0,
                        help="> 0: sample every prompt through this many continuously "
                             "refilled decode rows (the rollout engine) instead of batches")
    parser.add_argument("--dtype", default="", help="compute dtype, e.g. bfloat16")
    best = parser.add_argument_group(
        "best-of-N (one completion per prompt: the best of N samples under a scorer)")
    best.add_argument("--best-of", type=int, default=0, help="N (0 = off)")
    best.add_argument("--verifier", default="",
                      help="a reward function: built-in name, regex:PATTERN or module:function")
    best.add_argument("--reward-model", default="", help="a reward-model export")
    best.add_argument("--reference", default="",
                      help="a reference model: score = DPO implicit reward of --model")
    best.add_argument("--beta", type=float, default=0.1, help="implicit reward's beta")
    guided = parser.add_argument_group(
        "guided decoding (alignax.decoding.guided_decode; scorers as for best-of-N; "
        "--temperature 0 keeps the best candidate, T > 0 draws from softmax(score / T))")
    guided.add_argument("--decoding", choices=("sample", "best_of_n", "args", "deal", "tq"),
                        default="", help="default: best_of_n with --best-of, else sample")
    guided.add_argument("--candidates", type=int, default=0,
                        help="top-k candidates per step (default: 10 args, 4 deal / tq)")
    guided.add_argument("--weight", type=float, default=1.0,
                        help="the value's weight (ARGS w, DeAL lambda, TQ* alpha)")
    guided.add_argument("--beams", type=int, default=2, help="deal: beams per prompt")
    guided.add_argument("--lookahead", type=int, default=-1,
                        help="continuation tokens per candidate (default: 4 deal, "
                             "--max-new-tokens tq)")
    guided.add_argument("--guide-policy", default="",
                        help="with --reference: the DPO policy whose implicit reward guides")
    guided.add_argument("--baseline", default="",
                        help="tq: the baseline aligned model rho_BL that continues candidates")
    guided.add_argument("--rollouts", type=int, default=1, help="tq: continuations per candidate")
    guided.add_argument("--rollout-temperature", type=float, default=0.0,
                        help="tq: continuation temperature (0 = greedy)")
    guided.add_argument("--baseline-reward-model", default="",
                        help="tq indirect transfer: rho_BL's own reward r_BL (a reward model)")
    guided.add_argument("--indirect-beta", type=float, default=1.0,
                        help="tq indirect transfer: beta of the importance weights")
    args = parser.parse_args(argv)
    from alignax.sample_cli import sample_lines

    try:
        for line in sample_lines(args):
            print(line, flush=True)
    except (ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(str(e))
    return 0


def _eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignax eval",
        description="Evaluate HF exports (`WORKDIR/hf`). Without --data: greedy accuracy on "
                    "held-out draws of the built-in arithmetic task. With --data: preference "
                    "metrics on a local pairs file (and DPO implicit rewards with --reference).")
    parser.add_argument("--model", action="append", required=True,
                        help="HF model directory or train WORKDIR (repeatable)")
    parser.add_argument("--data", default="", help="pairs file (JSONL / Parquet / tfds:...)")
    parser.add_argument("--reference", default="",
                        help="reference model (HF directory or train WORKDIR) for implicit "
                             "rewards")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--seed", type=int, default=10_000, help="task prompts' seed")
    parser.add_argument("--max-operand", type=int, default=20)
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    import json

    from alignax.data import DataError
    from alignax.models.reward_model import HEAD_FILE
    from alignax.train import evaluation

    as_export = lambda m: os.path.join(m, "hf") if os.path.isdir(os.path.join(m, "hf")) else m
    models = [as_export(m) for m in args.model]
    reference = as_export(args.reference) if args.reference else ""
    try:
        for m in models + ([reference] if reference else []):
            if not os.path.isdir(m):
                raise FileNotFoundError(f"--model/--reference: {m} is not a directory")
        reward_models = [m for m in models if os.path.exists(os.path.join(m, HEAD_FILE))]
        if reward_models and not args.data:
            raise ValueError(f"{reward_models[0]} is a reward model: evaluate it on preference "
                             "pairs with --data PAIRS")
        if args.data:
            results = {m: (evaluation.reward_scores(m, args.data,
                                                    tokenizer=args.tokenizer or None)
                           if m in reward_models else
                           evaluation.pair_scores(m, args.data, reference_dir=reference or None,
                                                  beta=args.beta,
                                                  tokenizer=args.tokenizer or None))
                       for m in models}
        else:
            results = {m: {"task_accuracy": v} for m, v in evaluation.task_scores(
                models, num_prompts=args.num_prompts, seed=args.seed,
                max_operand=args.max_operand, tokenizer=args.tokenizer or None).items()}
    except DataError as e:
        return _fail(str(e))
    except (ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(str(e))
    for m, res in results.items():
        print(f"{m}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _convert(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="alignax convert",
        description="Export a checkpoint step of a train workdir as an HF directory (the "
                    "final step is already in WORKDIR/hf).")
    parser.add_argument("--workdir", required=True, help="a train workdir")
    parser.add_argument("--step", type=int, default=None, help="default: the latest")
    parser.add_argument("--out", required=True, help="the HF directory to write")
    args = parser.parse_args(argv)
    from alignax import algorithms

    try:
        algorithms.export_checkpoint(args.workdir, args.out, step=args.step,
                                     log=lambda m: print(f"alignax: {m}"))
    except (ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(str(e))
    return 0


def _compare(argv: list[str]) -> int:
    from alignax import compare, config
    from alignax.train.runner import TrainingError

    try:
        return compare.main(argv)
    except config.ConfigError as e:
        return _fail(str(e))
    except TrainingError as e:
        return _fail(str(e), code=3)
    except KeyError as e:
        return _fail(str(e.args[0]))
    except (ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(str(e))


def _plan(argv: list[str]) -> int:
    from alignax import config, plan_cli

    try:
        return plan_cli.main(argv)
    except config.ConfigError as e:
        return _fail(str(e))
    except (KeyError, ValueError, FileNotFoundError) as e:
        if not deliberate(e):
            raise
        return _fail(str(e.args[0]) if isinstance(e, KeyError) else str(e))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):
        from alignax import __version__

        print(f"alignax {__version__}")
        return 0
    commands = {"train": _train, "sample": _sample, "eval": _eval, "convert": _convert,
                "compare": _compare, "plan": _plan, "demo": None}
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "demo":
        from alignax import demo

        return demo.main(argv[1:])
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
