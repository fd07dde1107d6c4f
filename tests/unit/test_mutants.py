"""Every deliberate breakage `make mutants` keeps still applies to today's
tree and names tests that exist: a mutant whose text the code no longer
holds would fail only when someone runs it, long after the change that
made it stale."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_mutants() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "hack" / "mutants.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


MUTANTS = load_mutants().MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_mutant_applies_once_and_its_tests_exist(mutant: Any) -> None:
    path = ROOT / mutant.path
    text = path.read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1, (
        f"{mutant.path} holds the mutant's text {text.count(mutant.old)}x"
    )
    mutated = text.replace(mutant.old, mutant.new)
    if path.suffix == ".py":
        ast.parse(mutated)  # still Python
    for test in mutant.tests:
        file, *names = test.split("::")
        source = (ROOT / file).read_text(encoding="utf-8")  # a whole module, or:
        for name in (n.split("[")[0] for n in names):  # its classes and functions
            assert f"def {name}(" in source or f"class {name}" in source, f"{test} is gone"
