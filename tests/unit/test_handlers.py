"""The kopf wiring: what the operator registers, and what it spares kopf."""

from __future__ import annotations

import kopf

from blogsite_operator.handlers import NoDiffBase, register
from blogsite_operator.settings import OperatorSettings


def test_no_changing_handler_is_registered_so_no_diff_base_is_needed() -> None:
    # NoDiffBase is only right while kopf has no on.create/update/delete/
    # resume handler to compute a diff for.
    registry = kopf.OperatorRegistry()
    register(registry, OperatorSettings())
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    assert len(registry._watching.get_all_handlers()) == 10  # BlogSites and nine children


def test_the_diff_base_keeps_nothing_and_writes_nothing() -> None:
    storage = NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a", "annotations": {"x": "y"}}, "spec": {"a": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    patch = kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch
