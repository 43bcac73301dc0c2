"""Decoding-time alignment: choosing or steering what the policy samples at inference.

`best_of_n`: N samples per prompt (one sampler program: the N candidates share the prompt's
prefilled KV cache), scored by a verifier function, a reward model, or a DPO policy's implicit
reward against its reference; the best one per prompt is returned with what it cost.
"""

from alignax.decoding.best_of_n import (
    BestOfN,
    best_of_n,
    implicit_reward_scorer,
    reward_model_scorer,
    select_best,
    verifier_scorer,
)

__all__ = ["BestOfN", "best_of_n", "implicit_reward_scorer", "reward_model_scorer",
           "select_best", "verifier_scorer"]
