"""The watch API's wire format, as both API clients read it."""

from __future__ import annotations

import pytest

from blogsite_operator.watch_stream import WatchEndedError, watch_event, watch_query


def test_the_query_watches_from_a_version_until_a_timeout() -> None:
    assert watch_query([("fieldSelector", "metadata.name=x")], "42", 300) == [
        ("fieldSelector", "metadata.name=x"),
        ("watch", "true"),
        ("resourceVersion", "42"),
        ("allowWatchBookmarks", "false"),
        ("timeoutSeconds", "300"),
    ]


def test_events_blank_lines_and_the_error_that_ends_a_watch() -> None:
    assert watch_event(b'{"type": "ADDED", "object": {"data": {}}}\n') == {
        "type": "ADDED",
        "object": {"data": {}},
    }
    assert watch_event(b"  \n") is None
    with pytest.raises(WatchEndedError) as ended:
        watch_event(b'{"type": "ERROR", "object": {"code": 410, "message": "too old"}}')
    assert (ended.value.code, ended.value.message) == (410, "too old")
