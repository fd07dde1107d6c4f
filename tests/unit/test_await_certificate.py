from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pytest

from blogsite_operator.await_certificate import await_content
from blogsite_operator.cli import main


class FakeTime:
    """A clock that moves only when the code under test sleeps; each sleep
    may change the file, as the kubelet would between two polls."""

    def __init__(self, path: Path, contents: dict[float, bytes]) -> None:
        self.now = 0.0
        self.path = path
        self.contents = contents

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for at, content in self.contents.items():
            if at <= self.now:
                self.path.write_bytes(content)


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_waits_until_the_kubelet_puts_the_named_certificate_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tls.crt"
    path.write_bytes(b"placeholder")
    fake = FakeTime(path, {12.0: b"other", 25.0: b"issued"})
    with caplog.at_level(logging.INFO):
        waited = await_content(path, sha256(b"issued"), clock=fake.clock, sleep=fake.sleep)
    assert waited == 25.0
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 2, reports  # one every 10 s, not one per poll
    assert sha256(b"placeholder") in reports[0]
    assert sha256(b"other") in reports[1]


def test_a_missing_file_is_waited_for_too(tmp_path: Path) -> None:
    path = tmp_path / "tls.crt"
    fake = FakeTime(path, {3.0: b"issued"})
    assert await_content(path, sha256(b"issued"), clock=fake.clock, sleep=fake.sleep) == 3.0


def test_no_hash_waits_for_nothing(tmp_path: Path) -> None:
    def never(_: float) -> None:
        raise AssertionError("slept")

    assert await_content(tmp_path / "absent", "", sleep=never) < 1.0


def test_the_command_takes_the_hash_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tls.crt"
    path.write_bytes(b"issued")
    monkeypatch.setenv("BLOGSITE_TLS_CERTIFICATE_SHA256", sha256(b"issued").upper() + "\n")
    codes: list[int] = []
    command = threading.Thread(
        target=lambda: codes.append(main(["await-certificate", "--file", str(path)])), daemon=True
    )
    command.start()
    command.join(timeout=10)  # a wrong hash would wait for ever
    assert codes == [0]
