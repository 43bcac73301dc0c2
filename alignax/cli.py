"""`alignax` command line: `alignax demo`; `train|eval|sample|convert` as the trainers land."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alignax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="print every loss on the worked example")
    for name in ("train", "eval", "sample", "convert"):
        sub.add_parser(name, help=f"{name} (not available yet)", add_help=False)
    args, _ = parser.parse_known_args(argv)
    if args.command == "demo":
        from alignax import demo

        return demo.main()
    print(f"alignax: error: `alignax {args.command}` is not available in this version yet",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
