"""The traffic collector's cost: CPU and memory of a real cert-refresh process
(`blogsite-operator challenge-server --traffic-port`) receiving the syslog
lines nginx sends, one per request, at a given rate.

    .venv/bin/python hack/bench/collector.py [--rate 1000] [--seconds 20]

Prints the collector's CPU time per second of traffic (so per 1000 requests/s
at the default rate), its resident memory before and after, and whether every
line was counted. The lines are the ones nginx writes (render/nginx.py,
TRAFFIC_LOG_FIELDS), sent from this process at the rate asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINES = (
    b"<190>Dec  5 16:00:00 blogsite: daedalus|200|200|0.004",
    b"<190>Dec  5 16:00:00 blogsite: daedalus_canary|200|200|0.006",
    b"<190>Dec  5 16:00:00 blogsite: daedalus|500|500|0.002",
    b"<190>Dec  5 16:00:00 blogsite: daedalus_canary|200|502, 200|0.000, 0.003",
)


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counted(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/traffic", timeout=5) as response:
        pools = json.loads(response.read())["pools"]
    return sum(int(pool["requests"]) for pool in pools.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="requests a second")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    http_port, udp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    binary = Path(sys.executable).parent / "blogsite-operator"
    collector = subprocess.Popen(
        [
            str(binary),
            "challenge-server",
            "--address",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--traffic-port",
            str(udp_port),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                counted(http_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        rss_before, cpu_before = rss_mib(collector.pid), cpu_seconds(collector.pid)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent, started = 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < args.seconds:
            due = int(elapsed * args.rate)
            while sent < due:
                sender.sendto(LINES[sent % len(LINES)], ("127.0.0.1", udp_port))
                sent += 1
            time.sleep(0.001)
        time.sleep(1)  # the last lines
        cpu = cpu_seconds(collector.pid) - cpu_before
        got = counted(http_port)
        print(
            f"collector: {sent} lines at {args.rate}/s over {args.seconds}s; counted {got} "
            f"({got / sent:.2%})"
        )
        print(
            f"collector CPU: {cpu:.2f}s, {1000 * cpu / args.seconds:.0f} ms per second of "
            f"traffic ({cpu / args.seconds:.1%} of a core at {args.rate} requests/s)"
        )
        print(f"collector RSS: {rss_before:.1f} MiB before, {rss_mib(collector.pid):.1f} MiB after")
    finally:
        collector.terminate()
        collector.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
