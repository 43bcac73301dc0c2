r"""The calculator worked task (issue 16): 3-digit sums that the tiny model cannot add by
itself, a calculator tool, SFT on tool-using demonstrations, then multi-turn GRPO.

    python experiments/tool_task.py data --out runs/tools            # demos + prompts (JSONL)
    alignax train --config experiments/configs/sft.py --workdir runs/tools/sft \
        --config.data.path=runs/tools/sft.jsonl ...                  # see experiments/README
    python experiments/tool_task.py eval --model runs/tools/sft/hf   # accuracy with / without

A demonstration: prompt `123+456=`, completion `<tool>calc(123+456)</tool><result>579</result>579`.
`eval` reports greedy accuracy on held-out sums (seeds apart from the training ones):
* without the tool: one greedy completion, scored after its own last `</result>` (what the
  model answers when nobody runs the calculator: it has to invent the result);
* with the tool: a greedy multi-turn episode against the calculator environment
  (`alignax.envs.ToolEnvironment`), scored after the calculator's result;
* the fraction of episodes that called the tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def sums(n: int, seed: int, lo: int = 100, hi: int = 999) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    return [(f"{a}+{b}=", a + b) for a, b in rng.integers(lo, hi + 1, (n, 2)).tolist()]


def write_data(out: str, n_demos: int, n_prompts: int, direct_fraction: float = 0.0) -> None:
    """Demonstrations (`sft.jsonl`) and GRPO prompts (`prompts.jsonl`). A `direct_fraction`
    of the demonstrations answer without the tool (the right sum, written directly: an
    annotator who did the sum in their head), so the SFT model learns both habits and has to
    find out which one pays."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(4)
    with open(os.path.join(out, "sft.jsonl"), "w", encoding="utf-8") as f:
        for prompt, total in sums(n_demos, seed=1):
            call = prompt[:-1]
            completion = (str(total) if rng.random() < direct_fraction else
                          f"<tool>calc({call})</tool><result>{total}</result>{total}")
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    with open(os.path.join(out, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for prompt, total in sums(n_prompts, seed=2):  # prompt/completion: the answer rides along
            f.write(json.dumps({"prompt": prompt, "completion": str(total)}) + "\n")
    print(f"wrote {out}/sft.jsonl ({n_demos} demos), {out}/prompts.jsonl ({n_prompts} prompts)")


def evaluate(model_dir: str, n: int, *, max_turns: int = 3) -> dict:
    import jax
    from flax import nnx

    from alignax import data, envs, models, rewards
    from alignax.algorithms.online.rollout import prompt_examples
    from alignax.sampling import decode_completions, generate, left_pad
    from alignax.sampling.multiturn import encode_text, sample_episodes

    tok = models.load_tokenizer(model_dir if os.path.exists(
        os.path.join(model_dir, "tokenizer.json")) else "byte")
    model = models.from_hf(model_dir)
    prompts = [p for p, _ in sums(n, seed=3)]
    # Tokenised as training tokenises prompts (BOS on a text prompt).
    parsed = data.parse_records([(("eval", i), {"prompt": p, "completion": "0"})
                                 for i, p in enumerate(prompts)])
    ids = [list(e.prompt_ids) for e in prompt_examples(parsed, tok, data.Limits(64, 64))]
    score = rewards.get_reward_function("final_answer_correct")
    plain = generate(model, ids, max_new_tokens=48, eos_id=tok.eos_id, pad_id=tok.pad_id)
    alone = decode_completions(tok, plain.tokens, plain.mask, stop_ids=(tok.eos_id,))
    p_ids, p_mask = left_pad(ids, tok.pad_id)
    graphdef, params = nnx.split(model)
    episodes = sample_episodes(
        graphdef, params, p_ids, p_mask, jax.random.key(0),
        envs=[envs.ToolEnvironment({"calc": envs.calculator}) for _ in prompts], tokenizer=tok,
        prompts=prompts, max_turns=max_turns, max_total_tokens=96, max_turn_tokens=32,
        temperature=0.0, stop_sequence=tuple(encode_text(tok, "</tool>")))
    return {"model": model_dir, "prompts": n,
            "accuracy_without_tool": float(np.mean(score(prompts, alone))),
            "accuracy_with_tool": float(np.mean(score(prompts, episodes.texts))),
            "tool_call_fraction": float((episodes.tool_calls > 0).mean()),
            "example_with_tool": prompts[0] + episodes.texts[0],
            "example_without_tool": prompts[0] + alone[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--demos", type=int, default=2000)
    d.add_argument("--prompts", type=int, default=2000)
    d.add_argument("--direct-fraction", type=float, default=0.0,
                   help="share of demonstrations that answer without the tool")
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--prompts", type=int, default=256)
    args = p.parse_args(argv)
    if args.cmd == "data":
        write_data(args.out, args.demos, args.prompts, args.direct_fraction)
    else:
        print(json.dumps(evaluate(args.model, args.prompts), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
