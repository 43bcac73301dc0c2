"""Environments for multi-turn, tool-using rollouts (host-side, plain Python).

An environment sees the policy's turns as text and answers with an observation:

    env = ToolEnvironment({"calc": calculator})
    first = env.reset(prompt)                  # optional observation before the first turn
    result = env.step("<tool>calc(123 + 456)</tool>")
    result.observation                         # "<result>579</result>"
    result.done                                # False: the policy takes another turn

`sampling.multiturn.sample_episodes` drives one environment per sampled episode: it generates a
turn (stopping at the tool-call end tag or EOS), calls `step`, appends the observation's tokens
to the KV cache (no prefix is recomputed) and continues, within a turn and token budget. The
episode's tokens carry a loss mask that is 1 on the policy's tokens and 0 on observations.
"""

from alignax.envs.base import (
    Environment,
    StepResult,
    ToolCall,
    ToolCallParser,
    ToolEnvironment,
    calculator,
    environment_factory,
)

__all__ = ["Environment", "StepResult", "ToolCall", "ToolCallParser", "ToolEnvironment",
           "calculator", "environment_factory"]
