"""The challenge server: the answers it holds, and what it serves over HTTP.

The first tests start the real `blogsite-operator challenge-server` process;
the rest serve `make_handler` on loopback in a thread, with answers set directly.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from blogsite_operator.challenge_server import Answers, make_handler
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blogsite_operator",
            "challenge-server",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"},
    )
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                return True
        except OSError:
            return False

    wait_for(answering, timeout=15, what="the challenge server")
    yield base
    process.terminate()
    process.wait(timeout=10)


def test_health_endpoint(server: str) -> None:
    with urllib.request.urlopen(f"{server}/healthz", timeout=2) as response:
        assert response.status == 200
        assert response.read() == b"ok\n"


def test_unknown_token_is_404(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server}/.well-known/acme-challenge/nope", timeout=2)
    assert error.value.code == 404


# --- answers merged over several ConfigMaps -----------------------------------


class TestAnswers:
    def test_lookup_merges_every_config_map(self) -> None:
        answers = Answers()
        answers.replace("blogs", "one-acme-challenges", {"tok1": "tok1.key"})
        answers.replace("other", "two-acme-challenges", {"tok2": "tok2.key"})
        assert answers.lookup("tok1") == "tok1.key"
        assert answers.lookup("tok2") == "tok2.key"
        assert answers.lookup("tok3") is None

    def test_replace_changes_only_its_own_config_map(self) -> None:
        answers = Answers()
        answers.replace("blogs", "one", {"tok1": "tok1.key", "old": "old.key"})
        answers.replace("blogs", "two", {"tok2": "tok2.key"})
        answers.replace("blogs", "one", {"tok1": "tok1.key"})
        assert answers.lookup("old") is None
        assert answers.lookup("tok1") == "tok1.key"
        assert answers.lookup("tok2") == "tok2.key"

    def test_a_config_map_without_data_holds_nothing(self) -> None:
        answers = Answers()
        answers.replace("blogs", "one", {"tok1": "tok1.key"})
        answers.replace("blogs", "one", None)
        assert answers.lookup("tok1") is None

    def test_remove(self) -> None:
        answers = Answers()
        answers.replace("blogs", "one", {"tok1": "tok1.key"})
        answers.replace("blogs", "two", {"tok2": "tok2.key"})
        answers.remove("blogs", "one")
        answers.remove("blogs", "never-there")
        assert answers.lookup("tok1") is None
        assert answers.lookup("tok2") == "tok2.key"

    def test_reset_replaces_everything(self) -> None:
        answers = Answers()
        answers.replace("blogs", "one", {"tok1": "tok1.key"})
        answers.reset({("blogs", "two"): {"tok2": "tok2.key"}})
        assert answers.lookup("tok1") is None
        assert answers.lookup("tok2") == "tok2.key"

    def test_the_caller_keeps_no_handle_on_replaced_data(self) -> None:
        data = {"tok1": "tok1.key"}
        answers = Answers()
        answers.replace("blogs", "one", data)
        data["tok1"] = "changed"
        assert answers.lookup("tok1") == "tok1.key"


# --- the HTTP handler on loopback ----------------------------------------------

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
KEY_AUTHORIZATION = f"{TOKEN}.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


class RecordingAnswers(Answers):
    """Answers that remember every token the handler asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.looked_up: list[str] = []

    def lookup(self, token: str) -> str | None:
        self.looked_up.append(token)
        return super().lookup(token)


@pytest.fixture
def answers() -> RecordingAnswers:
    answers = RecordingAnswers()
    answers.replace("blogs", "lethain-acme-challenges", {TOKEN: KEY_AUTHORIZATION})
    return answers


@pytest.fixture
def port(answers: RecordingAnswers) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(answers))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": "a.example.com"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_known_token_returns_exactly_the_key_authorization(
    port: int, answers: RecordingAnswers
) -> None:
    assert get(port, f"/.well-known/acme-challenge/{TOKEN}") == (
        200,
        KEY_AUTHORIZATION.encode(),
    )
    assert answers.looked_up == [TOKEN]


def test_a_new_answer_is_served_at_once(port: int, answers: RecordingAnswers) -> None:
    assert get(port, "/.well-known/acme-challenge/fresh")[0] == 404
    answers.replace("blogs", "lethain-acme-challenges", {"fresh": "fresh.key"})
    assert get(port, "/.well-known/acme-challenge/fresh") == (200, b"fresh.key")
    assert get(port, f"/.well-known/acme-challenge/{TOKEN}")[0] == 404


def test_unknown_token_is_404_on_loopback(port: int, answers: RecordingAnswers) -> None:
    status, _ = get(port, "/.well-known/acme-challenge/nope")
    assert status == 404
    assert answers.looked_up == ["nope"]


@pytest.mark.parametrize(
    "token",
    ["..%2F..%2Fetc%2Fpasswd", "a/b", "a.b", "..", "%41", "x" * 257, ""],
    ids=["encoded-traversal", "slash", "dot", "dotdot", "percent", "too-long", "empty"],
)
def test_invalid_token_is_404_and_never_looked_up(
    port: int, answers: RecordingAnswers, token: str
) -> None:
    answers.replace("blogs", "planted", {token: "must-not-be-served"})
    status, body = get(port, f"/.well-known/acme-challenge/{token}")
    assert status == 404
    assert b"must-not-be-served" not in body
    assert answers.looked_up == []


def test_longest_valid_token_is_served(port: int, answers: RecordingAnswers) -> None:
    token = "x" * 256
    answers.replace("blogs", "long", {token: "long.key"})
    assert get(port, f"/.well-known/acme-challenge/{token}") == (200, b"long.key")


def test_healthz_on_loopback(port: int) -> None:
    assert get(port, "/healthz") == (200, b"ok\n")


@pytest.mark.parametrize("path", ["/", "/index.html", "/.well-known/acme-challengeX/abc"])
def test_other_paths_are_404(port: int, answers: RecordingAnswers, path: str) -> None:
    assert get(port, path)[0] == 404
    assert answers.looked_up == []


def test_query_strings_are_ignored(port: int) -> None:
    assert get(port, "/healthz?probe=kubelet") == (200, b"ok\n")
    assert get(port, f"/.well-known/acme-challenge/{TOKEN}?x=1&y=2") == (
        200,
        KEY_AUTHORIZATION.encode(),
    )
