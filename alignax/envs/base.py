"""The environment interface, a tool-call parser, a tool-calling environment and a calculator.

Everything here is host-side Python, called between jitted decode turns.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What an environment answers to one policy turn.

    Attributes:
      observation: text appended to the episode (masked out of the loss), or None.
      reward: this turn's reward (summed over the episode by the rollout), default 0.
      done: the episode ends after this turn.
      error: the turn's tool call failed (the error text is the observation); counted.
    """

    observation: str | None = None
    reward: float = 0.0
    done: bool = True
    error: bool = False


class Environment(Protocol):
    """One episode's environment. A new instance (or a `reset`) per episode: episodes share no
    state, so a rollout redone from a checkpoint sees the same environments."""

    def reset(self, prompt: Any) -> str | None:
        """Starts an episode for `prompt` (text or chat messages); an optional observation the
        policy sees before its first turn (None = nothing)."""

    def step(self, turn: str) -> StepResult:
        """The policy's turn (its text, up to and including a tool call's end tag or EOS)."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str


@dataclasses.dataclass(frozen=True)
class ToolCallParser:
    """Finds a tool call `{start}name(arguments){end}` in a turn (the last one wins).

    >>> ToolCallParser().parse("Let me add. <tool>calc(2 + 3)</tool>")
    ToolCall(name='calc', arguments='2 + 3')
    >>> ToolCallParser(start="[[", end="]]").parse("no call") is None
    True
    """

    start: str = "<tool>"
    end: str = "</tool>"
    result_start: str = "<result>"
    result_end: str = "</result>"

    def __post_init__(self):
        if not self.start or not self.end:
            raise ValueError("tool-call tags must be non-empty strings")

    def parse(self, turn: str) -> ToolCall | None:
        body = re.escape(self.start) + r"(.*?)" + re.escape(self.end)
        calls = re.findall(body, turn, flags=re.DOTALL)
        if not calls:
            return None
        text = calls[-1].strip()
        match = re.fullmatch(r"([A-Za-z_][\w.]*)\s*\((.*)\)", text, flags=re.DOTALL)
        if match is None:  # a bare argument: the environment's default tool
            return ToolCall("", text)
        return ToolCall(match.group(1), match.group(2).strip())

    def wrap(self, text: str) -> str:
        return f"{self.result_start}{text}{self.result_end}"


class ToolEnvironment:
    """A turn with a tool call gets the tool's result as the observation and another turn; a
    turn without one ends the episode (it is the answer). A failing tool (unknown name,
    exception) answers with the error text, `error=True`: never a crash.

    Args:
      tools: name -> `fn(arguments: str) -> str`; a call without a name uses the only tool.
      parser: the tags (`ToolCallParser`).
      max_observation_chars: a longer result is cut (and says so).
    """

    def __init__(self, tools: Mapping[str, Callable[[str], Any]], *,
                 parser: ToolCallParser | None = None, max_observation_chars: int = 200):
        if not tools:
            raise ValueError("ToolEnvironment needs at least one tool")
        self.tools = dict(tools)
        self.parser = parser or ToolCallParser()
        self.max_observation_chars = max_observation_chars

    def reset(self, prompt: Any) -> str | None:
        return None

    def step(self, turn: str) -> StepResult:
        call = self.parser.parse(turn)
        if call is None:
            return StepResult(done=True)
        name = call.name or (next(iter(self.tools)) if len(self.tools) == 1 else "")
        try:
            if name not in self.tools:
                raise KeyError(f"unknown tool {call.name!r}; tools: {', '.join(self.tools)}")
            text, error = str(self.tools[name](call.arguments)), False
        except Exception as e:  # noqa: BLE001 - a tool's failure is the policy's observation
            text, error = f"error: {type(e).__name__}: {e}", True
        if len(text) > self.max_observation_chars:
            text = text[:self.max_observation_chars] + "...(cut)"
        return StepResult(observation=self.parser.wrap(text), done=False, error=error)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Arithmetic on numbers: + - * / // % ** and parentheses; nothing else is evaluated.

    >>> calculator("123 + 456 * 2")
    '1035'
    >>> calculator("7 / 2")
    '3.5'
    """

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")

    if len(expression) > 200:
        raise ValueError("expression longer than 200 characters")
    value = ev(ast.parse(expression.strip(), mode="eval"))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def environment_factory(name: str, *, parser: ToolCallParser | None = None,
                        max_observation_chars: int = 200) -> Callable[[], Environment]:
    """`make() -> Environment` for the config's `environment.name`: "calculator" (a
    `ToolEnvironment` with the `calc` tool) or `package.module:factory`, your own zero-argument
    callable returning an environment, imported from the working directory or PYTHONPATH."""
    if name == "calculator":
        return lambda: ToolEnvironment({"calc": calculator}, parser=parser,
                                       max_observation_chars=max_observation_chars)
    if ":" not in name:
        raise ValueError(f"config field 'environment.name': unknown environment {name!r}; "
                         "use 'calculator' or 'package.module:factory'")
    from alignax.config import import_object

    return import_object(name, "environment.name")
