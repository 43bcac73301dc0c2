r"""Multi-turn GRPO with a calculator tool on the arithmetic task.

alignax train --config experiments/configs/grpo_tools.py:smoke --workdir runs/grpo_tools
From an SFT export: --config.model.path=runs/sft/hf. Each episode: the policy writes a turn;
a `<tool>calc(EXPR)</tool>` call ends the turn and the environment appends
`<result>VALUE</result>` (masked out of the loss), up to `environment.max_turns` turns; the
reward checks the episode's answer. Your own environment: `--config.environment.name=
my_envs:make` (a zero-argument callable returning an `alignax.envs.Environment`).
The worked run (SFT on demonstrations, half of them without the tool, then this: the policy
learns to call the tool) is in experiments/README.md, "Calculator tool".
"""

import common

from alignax import config

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default"):
    c = common.online("grpo", dict(name="grpo", beta=0.0, epsilon=0.2, epsilon_high=0.2,
                                   scale_rewards="group", importance_sampling_level="token"))
    c.update(config.defaults("environment"))
    c.environment.name = "calculator"
    c.environment.max_turns = 3
    c.environment.max_turn_tokens = 16
    c.rollout.max_new_tokens = 16
    if variant == "smoke":
        common.online_smoke(c)
    return c
