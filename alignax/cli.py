"""`alignax` command line.

  alignax train --config PATH[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]
  alignax demo [--workdir DIR]

A bad config or bad data ends with exit status 2 and one line naming the field, file and line.
"""

from __future__ import annotations

import argparse
import os
import sys


def _train(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignax train")
    parser.add_argument("--config", required=True, help="PATH[:VARIANT]")
    parser.add_argument("--workdir", required=True)
    args, rest = parser.parse_known_args(argv)
    from alignax import config as C
    from alignax.data import DataError

    try:
        cfg = C.load_config(args.config)
        C.apply_overrides(cfg, rest)
        C.validate(cfg, source=args.config)
        from alignax.train import loop

        summary = loop.run(cfg, args.workdir)
    except (C.ConfigError, DataError) as e:
        print(f"alignax: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"alignax: error: {args.config}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from alignax.train.loop import TrainingError

        if isinstance(e, TrainingError):
            print(f"alignax: error: {e}", file=sys.stderr)
            return 3
        raise
    if "preempted_at" in summary:
        return 0
    line = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in summary.items() if not isinstance(v, dict))
    print(f"alignax: done: {line}")
    for key in ("eval_before", "eval_after"):
        if key in summary:
            print(f"  {key}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(
                summary[key].items())))
    print(f"  workdir: {os.path.abspath(args.workdir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"train": _train, "demo": None}
    if not argv or argv[0] not in commands:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[0] == "demo":
        from alignax import demo

        return demo.main(argv[1:])
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
