"""Load generator, run as its own process: `python -m benchmarks.loadgen --url ... --body ... (closed|open)`.

Closed loop: `concurrency` clients, each sending its next request when the previous one returns. Open loop:
Poisson arrivals at `rate`/s with send times drawn in advance (seeded); latency counts from the *scheduled* send
time, so a slow server cannot hide its queueing (no coordinated omission); in-flight requests are capped and
overflow is counted as dropped. Both are bounded in time and in request count. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

MAX_REQUESTS = 2_000_000


def _summary(latencies: list[float], statuses: dict[int, int], window: float, dropped: int = 0) -> dict[str, Any]:
    latencies.sort()

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000.0

    ok = statuses.get(200, 0)
    return {
        "completed": len(latencies),
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "dropped": dropped,
        "window_s": window,
        "throughput": ok / window if window else 0.0,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
    }


Body = tuple[bytes, dict[str, str]]


async def closed_loop(
    url: str, bodies: list[Body], concurrency: int, warmup: float, duration: float, max_requests: int
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    measure_from = started + warmup
    deadline = measure_from + duration
    sent = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal sent
            while sent < max_requests:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                body, headers = bodies[(index + sent) % len(bodies)]
                sent += 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= deadline:
                    latencies.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return _summary(latencies, statuses, duration)


async def open_loop(
    url: str, bodies: list[Body], rate: float, warmup: float, duration: float, max_in_flight: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    schedule: list[float] = []
    t = 0.0
    total = warmup + duration
    while t < total and len(schedule) < MAX_REQUESTS:
        t += rng.expovariate(rate)
        schedule.append(t)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    dropped = 0
    in_flight = 0
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(scheduled: float, measured: bool, body: Body) -> None:
            nonlocal in_flight
            data, headers = body
            try:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    status = response.status
            finally:
                in_flight -= 1
            if measured:
                latencies.append(time.perf_counter() - (start + scheduled))
                statuses[status] = statuses.get(status, 0) + 1

        tasks = []
        for i, scheduled in enumerate(schedule):
            delay = start + scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = scheduled >= warmup
            if in_flight >= max_in_flight:
                dropped += int(measured)
                continue
            in_flight += 1
            tasks.append(asyncio.ensure_future(one(scheduled, measured, bodies[i % len(bodies)])))
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    return _summary(latencies, statuses, duration, dropped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--body",
        action="append",
        required=True,
        help="pre-encoded request body file, PATH or PATH:JSON_HEADER_LENGTH (binary); repeatable",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    sub = parser.add_subparsers(dest="mode", required=True)
    closed = sub.add_parser("closed")
    closed.add_argument("--concurrency", type=int, required=True)
    closed.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    opened = sub.add_parser("open")
    opened.add_argument("--rate", type=float, required=True)
    opened.add_argument("--max-in-flight", type=int, default=4096)
    opened.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("only loopback (http://127.0.0.1:PORT) targets are allowed")
    bodies: list[Body] = []
    for spec in args.body:
        path, _, header_length = spec.partition(":")
        headers = {"Content-Type": "application/json"}
        if header_length:
            headers = {"Inference-Header-Content-Length": header_length, "Content-Type": "application/octet-stream"}
        bodies.append((Path(path).read_bytes(), headers))
    if args.mode == "closed":
        result = asyncio.run(
            closed_loop(args.url, bodies, args.concurrency, args.warmup, args.duration, args.max_requests)
        )
    else:
        result = asyncio.run(
            open_loop(args.url, bodies, args.rate, args.warmup, args.duration, args.max_in_flight, args.seed)
        )
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
