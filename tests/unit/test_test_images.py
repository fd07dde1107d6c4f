"""The Go programs the real node's test images are built from have tests of
their own; they run here, so a stand-in that misbehaves is caught before a
real-node test leans on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[1] / "images"


@pytest.mark.parametrize("program", ["daedalus"])
def test_go_tests_of_the_test_images_pass(program: str) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to build the test images (and to test them)")
    result = subprocess.run(
        [go, "test", "./..."],
        cwd=IMAGES / program,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
