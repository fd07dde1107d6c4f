"""The operator's reading of a collector's /traffic answer (pure parsing)."""

from __future__ import annotations

import json

import pytest

from blogsite_operator.policies.canary import LATENCY_BOUNDS, PoolCounts
from blogsite_operator.traffic_collector import Collector, parse
from blogsite_operator.traffic_reader import parse_reading


def test_a_collectors_snapshot_reads_back_as_its_counts() -> None:
    collector = Collector()
    for line in (
        b"<190>Dec  5 16:00:00 blogsite: daedalus|200|200|0.004",
        b"<190>Dec  5 16:00:00 blogsite: daedalus_canary|200|502, 200|0.000, 0.003",
    ):
        request = parse(line)
        assert request is not None
        collector.count(request)
    reading = parse_reading(json.dumps(collector.snapshot()).encode())
    assert reading.boot == collector.boot
    assert reading.stable == PoolCounts(1, 0, (1,) * len(LATENCY_BOUNDS))
    assert reading.canary == PoolCounts(1, 1, (1,) * len(LATENCY_BOUNDS))


def test_a_pool_left_out_or_malformed_counts_as_nothing() -> None:
    reading = parse_reading(b'{"boot": "b", "pools": {"daedalus": {"latency": [1]}}}')
    assert (reading.stable, reading.canary) == (PoolCounts(), PoolCounts())


@pytest.mark.parametrize("body", [b"[]", b'{"pools": {}}', b"not json"])
def test_anything_else_is_no_reading(body: bytes) -> None:
    with pytest.raises((TypeError, ValueError)):
        parse_reading(body)
