"""An environment for the multi-turn run tests: every turn but the last gets an observation,
whatever the (random) policy wrote; the second call fails (a counted tool error). On a
process other than the first its observations are longer, so a multi-process run whose
processes stepped their own environments would split (tests/test_multiprocess_runs.py)."""

import jax

from alignax.envs import StepResult


class Scripted:
    def __init__(self):
        self.calls = 0

    def reset(self, prompt):
        return None

    def step(self, turn):
        self.calls += 1
        if self.calls >= 3:
            return StepResult(reward=1.0, done=True)
        mark = "x" * jax.process_index()
        return StepResult(observation=f"<result>{self.calls * 111}{mark}</result>", done=False,
                          error=self.calls == 2)


def make():
    return Scripted()
