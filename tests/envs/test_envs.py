"""Environments: the tool-call parser, the calculator, and a tool environment whose failures
are observations (counted), never crashes."""

import pytest

from alignax.envs import StepResult, ToolCall, ToolCallParser, ToolEnvironment, calculator


def test_parser_finds_the_last_call_with_configurable_tags():
    p = ToolCallParser()
    assert p.parse("a <tool>calc(1+2)</tool> b <tool>calc( 3 * 4 )</tool>") == ToolCall(
        "calc", "3 * 4")
    assert p.parse("<tool>12 + 5</tool>") == ToolCall("", "12 + 5")  # the default tool
    assert p.parse("<tool>calc(1+2)") is None  # unterminated: no call
    assert p.parse("no call here") is None
    brackets = ToolCallParser(start="[[", end="]]", result_start="=> ", result_end="\n")
    assert brackets.parse("x [[search(jax scan)]]") == ToolCall("search", "jax scan")
    assert brackets.wrap("42") == "=> 42\n"
    with pytest.raises(ValueError, match="non-empty"):
        ToolCallParser(start="")


def test_calculator_evaluates_arithmetic_only():
    assert calculator("123 + 456 * 2") == "1035"
    assert calculator("(7 - 10) / 2") == "-1.5"
    assert calculator("2 ** 10 // 3 % 100") == "41"
    for bad in ("__import__('os')", "x + 1", "[1, 2]", "2 ** 1000", "'a' * 3", "1" * 201):
        with pytest.raises((ValueError, SyntaxError)):
            calculator(bad)


def test_tool_environment_answers_calls_and_turns_failures_into_observations():
    env = ToolEnvironment({"calc": calculator})
    assert env.reset("What is 2 + 2?") is None
    assert env.step("I will compute. <tool>calc(123 + 456)</tool>") == StepResult(
        "<result>579</result>", done=False)
    assert env.step("<tool>123 + 1</tool>").observation == "<result>124</result>"
    failed = env.step("<tool>calc(1 / 0)</tool>")
    assert failed.error and not failed.done
    assert failed.observation == "<result>error: ZeroDivisionError: division by zero</result>"
    unknown = env.step("<tool>search(cats)</tool>")
    assert unknown.error and "unknown tool 'search'" in unknown.observation
    answer = env.step("The answer is 579.")
    assert answer.done and answer.observation is None and not answer.error
    long = ToolEnvironment({"echo": lambda s: s * 100}, max_observation_chars=10)
    assert long.step("<tool>echo(ab)</tool>").observation == "<result>ababababab...(cut)</result>"
    with pytest.raises(ValueError, match="at least one tool"):
        ToolEnvironment({})
