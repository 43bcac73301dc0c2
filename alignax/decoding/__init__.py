"""Decoding-time alignment: choosing or steering what the policy samples at inference.

* `best_of_n`: N samples per prompt (one sampler program: the N candidates share the prompt's
  prefilled KV cache), scored by a verifier function, a reward model, or a DPO policy's
  implicit reward against its reference; the best one per prompt is returned with what it
  cost.
* `guided_decode`: token-level search, one compiled program: ARGS (reward-guided top-k
  decoding), DeAL (beam search with lookahead guided by the reward) and Transfer Q* (values
  from continuations of a baseline aligned model; direct and indirect transfer).

Every method reports the forward tokens it spent per output token, so methods compare at
equal compute (docs/decoding.md).
"""

from alignax.decoding.best_of_n import (
    BestOfN,
    best_of_n,
    implicit_reward_scorer,
    reward_model_scorer,
    select_best,
    verifier_scorer,
)
from alignax.decoding.guided import (
    Guided,
    ImplicitGuide,
    Search,
    SequenceScorer,
    args_search,
    deal_search,
    guided_decode,
    implicit_sequence_scorer,
    reward_model_sequence_scorer,
    transfer_q_search,
    verifier_sequence_scorer,
)

__all__ = ["BestOfN", "Guided", "ImplicitGuide", "Search", "SequenceScorer", "args_search",
           "best_of_n", "deal_search", "guided_decode", "implicit_reward_scorer",
           "implicit_sequence_scorer", "reward_model_scorer", "reward_model_sequence_scorer",
           "select_best", "transfer_q_search", "verifier_scorer", "verifier_sequence_scorer"]
