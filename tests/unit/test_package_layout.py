"""`operator/` is a source root, never a package: `operator` is a stdlib module."""

from __future__ import annotations

import importlib
import operator
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_directory_is_not_a_package() -> None:
    assert (ROOT / "operator" / "blogsite_operator" / "__init__.py").is_file()
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_stdlib_operator_is_not_shadowed() -> None:
    # Imported with `operator/` on sys.path (pytest's pythonpath), the name
    # must still resolve to the standard library module.
    assert operator.itemgetter(1)([0, 42]) == 42
    assert "site-packages" not in (operator.__file__ or "")
    assert Path(operator.__file__ or "").parent != ROOT / "operator"


def test_stdlib_operator_in_a_fresh_interpreter_from_the_repo_root() -> None:
    code = "import operator, blogsite_operator; print(operator.add(2, 3))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "5"


def test_package_imports() -> None:
    module = importlib.import_module("blogsite_operator.cli")
    assert callable(module.main)
