"""BUILD stays in sync with the tree: every module and every test file is named in a target."""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import build_targets  # noqa: E402


def test_build_names_every_module_and_test():
    named = set(re.findall(r'"([^"]+\.py)"', (ROOT / "BUILD").read_text()))
    modules = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("alignax/**/*.py")}
    tests = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("tests/**/test_*.py")}
    missing = sorted((modules | tests) - named)
    assert not missing, f"not in BUILD (run `python tools/build_targets.py > BUILD`): {missing}"


def test_build_is_generated_from_tree():
    assert (ROOT / "BUILD").read_text() == build_targets.render(), (
        "BUILD is stale: run `python tools/build_targets.py > BUILD`")
