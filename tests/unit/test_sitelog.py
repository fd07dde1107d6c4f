"""Log records made while working on a site name it, in threads too."""

from __future__ import annotations

import asyncio
import logging

from blogsite_operator import sitelog


def record(message: str) -> logging.LogRecord:
    made = logging.LogRecord("blogsite_operator", logging.INFO, __file__, 1, message, None, None)
    sitelog.SiteReference().filter(made)
    return made


def test_records_name_the_site_they_are_about_and_only_inside() -> None:
    assert reference("before") is None
    with sitelog.about("blogs", "lethain"):
        ref = reference("during")
    assert ref == {
        "apiVersion": "blog.daedalus.dev/v1alpha1",
        "kind": "BlogSite",
        "namespace": "blogs",
        "name": "lethain",
    }
    assert reference("after") is None


def test_an_object_a_record_names_already_is_kept() -> None:
    made = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, "m", None, None)
    made.k8s_ref = {"kind": "Pod", "name": "p"}
    with sitelog.about("blogs", "lethain"):
        sitelog.SiteReference().filter(made)
    assert getattr(made, "k8s_ref", None) == {"kind": "Pod", "name": "p"}


def reference(message: str) -> object:
    return getattr(record(message), "k8s_ref", None)


def test_the_site_follows_the_work_into_threads_and_tasks() -> None:
    async def in_task() -> object:
        return reference("task")

    async def main() -> list[object]:
        with sitelog.about("blogs", "lethain"):
            in_thread = await asyncio.to_thread(reference, "thread")
            task = asyncio.ensure_future(in_task())
        return [in_thread, await task]

    for ref in asyncio.run(main()):
        assert isinstance(ref, dict)
        assert ref["name"] == "lethain"
