"""The DPO training-step benchmark under its first name: `benchmarks/train_step.py --task dpo`
(same arguments, same output). Kept so the commands recorded in benchmarks/RESULTS.md run."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--task", "dpo", *sys.argv[1:]]))
