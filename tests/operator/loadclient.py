"""A closed-loop Open Inference Protocol v2 load client that counts every lost request.

Why it exists: a rollout of a NeuronDeployment must not lose requests (issue #11), and the only honest way to
show it is a client that keeps sending while the pods are replaced and reports every failure. The rollout test
(``test_rollout_zero_loss``) ships this file into a Pod of the runtime image through a ConfigMap and runs it
against the NeuronDeployment's Service, so it must run with nothing but the standard library and aiohttp
(Python >= 3.10): it imports nothing from this project.

Behaviour: ``--concurrency`` workers each send ``POST <url>`` (an OIP v2 infer request with one FP32 input) in a
closed loop: the next request goes out when the previous one has answered, and at most one request starts per
``--interval-ms`` per worker (so an outage does not turn into a hot loop of instant failures). The workers share
one aiohttp session whose connections are kept alive (``--connections keepalive``, what real clients such as
tritonclient do): a transport error closes that connection and the next request opens a new one, and the
failed request counts as an error. ``--connections fresh`` opens a new TCP connection per request instead.

Every request ends as exactly one of: ``ok`` (HTTP 200 with a v2 response echoing the request id) or an error
of one kind: ``http_<status>``, ``timeout`` (``--timeout-s`` per request), ``connection_refused``,
``connection_reset``, ``server_disconnected`` (the server closed a kept-alive connection before answering),
``connection_closed`` (closed while the request was being sent), ``connect_error``, ``dns``, ``bad_response``
or the exception's class name. Nothing aborts the run.

Poisoned requests (``--poison-every N``, default 0 = never): every N-th request, by one sequence number shared by
all workers (the N-th, 2N-th, ... request started), sets the first element of its data to ``--poison-value``
(default 7.0; the other requests' first element is 0.0), and its id ends in ``-poisoned``. It is for
canary-rollout tests: a "bad new model version" (``neuron_runtime.zoo:poisoned_mlp``) fails on exactly those
values, and the test must tell the requests that were meant to fail from real loss. Poisoned requests count in
total/ok/errors like any other, and their outcomes are also counted apart in ``poisoned``, so "every non-poisoned
request succeeded" reads ``result["lost"] == result["poisoned"]["lost"]``.

It runs until ``--duration-s`` passes, the ``--stop-file`` appears, or SIGTERM/SIGINT; requests in flight then
finish (bounded by their timeout). Every ``--progress-s`` it prints ``{"event": "progress", ...}``; at the end
one line ``{"event": "result", ...}`` with total, ok, errors by kind, first/last error time (Unix seconds),
the p50/p99 latency of the OK requests, the number of TCP connections opened, the first errors in detail (at most
``ERROR_SAMPLES`` of non-poisoned requests plus ``POISONED_SAMPLES`` of poisoned ones, marked ``"poisoned": true``,
so expected failures cannot crowd out real ones) and ``poisoned``: ``{"total", "ok", "lost", "errors": {kind: n},
"first_error", "last_error"}`` of the poisoned requests alone (all zero without ``--poison-every``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

#: Errors of non-poisoned requests kept in detail in the result (the counts cover all of them).
ERROR_SAMPLES = 40
#: Errors of poisoned requests kept in detail besides those (expected failures must not crowd out real ones).
POISONED_SAMPLES = 10


@dataclass
class Outcomes:
    """How the poisoned requests ended (they are counted in the `Tally`'s totals too)."""

    total: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_error: float | None = None
    last_error: float | None = None
    samples: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "ok": self.ok,
            "lost": self.total - self.ok,
            "errors": dict(sorted(self.errors.items())),
            "first_error": self.first_error,
            "last_error": self.last_error,
        }


@dataclass
class Tally:
    started: float = field(default_factory=time.time)
    total: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    first_error: float | None = None
    last_error: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    connections: int = 0
    poisoned: Outcomes = field(default_factory=Outcomes)

    def success(self, latency_s: float, poisoned: bool = False) -> None:
        self.total += 1
        self.ok += 1
        self.latencies_ms.append(latency_s * 1000.0)
        if poisoned:
            self.poisoned.total += 1
            self.poisoned.ok += 1

    def failure(self, kind: str, at: float, latency_s: float, detail: str, poisoned: bool = False) -> None:
        self.total += 1
        self.errors[kind] += 1
        self.first_error = at if self.first_error is None else self.first_error
        self.last_error = at
        sample = {"t": round(at, 3), "kind": kind, "after_ms": round(latency_s * 1000, 1), "detail": detail}
        if poisoned:
            p = self.poisoned
            p.total += 1
            p.errors[kind] += 1
            p.first_error = at if p.first_error is None else p.first_error
            p.last_error = at
            if p.samples < POISONED_SAMPLES:
                p.samples += 1
                self.samples.append(sample | {"poisoned": True})
        elif len(self.samples) - self.poisoned.samples < ERROR_SAMPLES:
            self.samples.append(sample)

    def snapshot(self, event: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": event,
            "t": round(time.time(), 3),
            "total": self.total,
            "ok": self.ok,
            "lost": self.total - self.ok,
        }
        if event == "progress":
            return out | {"poisoned": {k: self.poisoned.as_dict()[k] for k in ("total", "ok", "lost")}}
        lat = sorted(self.latencies_ms)
        return out | {
            "seconds": round(time.time() - self.started, 3),
            "errors": dict(sorted(self.errors.items())),
            "first_error": self.first_error,
            "last_error": self.last_error,
            "p50_ms": _percentile(lat, 0.50),
            "p99_ms": _percentile(lat, 0.99),
            "connections": self.connections,
            "error_samples": self.samples,
            "poisoned": self.poisoned.as_dict(),
        }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def classify(exc: BaseException) -> str:
    """The error kind of a transport failure (an HTTP answer is classified by its status instead)."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):  # aiohttp's timeouts subclass asyncio's
        return "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    dns = getattr(aiohttp, "ClientConnectorDNSError", None)  # aiohttp >= 3.10
    if dns is not None and isinstance(exc, dns):
        return "dns"
    code = getattr(exc, "errno", None)
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        if code == errno.ECONNREFUSED:
            return "connection_refused"
        return "connect_error" if code != errno.ECONNRESET else "connection_reset"
    if code == errno.ECONNRESET or isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if code == errno.EPIPE or isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload_error"
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection_closed"  # e.g. "Can not write request body": the peer closed it while we sent
    return type(exc).__name__


def infer_body(
    request_id: str, input_name: str, shape: list[int], datatype: str, poison: float | None = None
) -> dict[str, Any]:
    """The request's body; `poison` (a poisoned request) replaces the first element of its data (else 0.0)."""
    count = 1
    for d in shape:
        count *= d
    data = [((i * 7) % 11) / 10.0 for i in range(count)]
    if poison is not None and data:
        data[0] = poison
    return {"id": request_id, "inputs": [{"name": input_name, "shape": shape, "datatype": datatype, "data": data}]}


async def _one(
    session: aiohttp.ClientSession, args: argparse.Namespace, tally: Tally, request_id: str, poisoned: bool = False
) -> None:
    poison = args.poison_value if poisoned else None
    body = infer_body(request_id, args.input_name, args.shape, args.datatype, poison)
    t0 = time.perf_counter()
    try:
        async with session.post(args.url, json=body) as resp:
            payload = await resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status != 200:
                detail = payload[:200].decode(errors="replace")
                tally.failure(f"http_{resp.status}", time.time(), elapsed, detail, poisoned)
                return
            try:
                answer = json.loads(payload)
                good = answer.get("id") == request_id and bool(answer.get("outputs"))
            except ValueError:
                good = False
            if not good:
                tally.failure("bad_response", time.time(), elapsed, payload[:200].decode(errors="replace"), poisoned)
                return
            tally.success(elapsed, poisoned)
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
        tally.failure(classify(exc), time.time(), time.perf_counter() - t0, detail, poisoned)


async def _worker(
    index: int,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    tally: Tally,
    stop: asyncio.Event,
    sequence: itertools.count[int],
) -> None:
    seq = 0
    interval = args.interval_ms / 1000.0
    while not stop.is_set():
        started = time.perf_counter()
        seq += 1
        number = next(sequence)  # shared by the workers: one event loop, so no two requests get the same
        poisoned = args.poison_every > 0 and number % args.poison_every == 0
        await _one(session, args, tally, f"w{index}-{seq}" + ("-poisoned" if poisoned else ""), poisoned)
        pause = interval - (time.perf_counter() - started)
        if pause > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)


async def _watch(args: argparse.Namespace, tally: Tally, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + args.duration_s
    next_progress = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline or (args.stop_file and await asyncio.to_thread(os.path.exists, args.stop_file)):
            stop.set()
            return
        if now >= next_progress:
            print(json.dumps(tally.snapshot("progress")), flush=True)
            next_progress = now + args.progress_s
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def run(args: argparse.Namespace, tally: Tally | None = None) -> dict[str, Any]:
    """Run the load until told to stop; ``tally`` (a fresh one by default) lets a caller watch the counts."""
    tally = tally if tally is not None else Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def connection_opened(*_: Any) -> None:
        tally.connections += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(connection_opened)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=args.connections == "fresh")
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[trace]) as session:
        sequence = itertools.count(1)
        workers = [
            asyncio.ensure_future(_worker(i, session, args, tally, stop, sequence)) for i in range(args.concurrency)
        ]
        await _watch(args, tally, stop)
        await asyncio.gather(*workers)
    return tally.snapshot("result")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", required=True, help="the infer URL, e.g. http://nd.ns.svc:8080/v2/models/m/infer")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout-s", type=float, default=5.0, help="per-request timeout")
    p.add_argument("--interval-ms", type=float, default=0.0, help="least time between request starts per worker")
    p.add_argument("--duration-s", type=float, default=600.0, help="stop after this long at the latest")
    p.add_argument("--stop-file", default="", help="stop when this file exists")
    p.add_argument("--progress-s", type=float, default=1.0)
    p.add_argument("--connections", choices=("keepalive", "fresh"), default="keepalive")
    p.add_argument("--input-name", default="x")
    p.add_argument("--shape", type=lambda s: [int(d) for d in s.split(",")], default=[1, 16])
    p.add_argument("--datatype", default="FP32")
    p.add_argument(
        "--poison-every",
        type=int,
        default=0,
        help="poison every N-th request (one sequence over all workers): its first data element is --poison-value; "
        "0 = never",
    )
    p.add_argument("--poison-value", type=float, default=7.0, help="the first data element of a poisoned request")
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.poison_every < 0:
        p.error(f"--poison-every must be 0 (never) or a positive N, got {args.poison_every}")
    if not math.isfinite(args.poison_value):
        p.error(f"--poison-value must be a finite number (JSON has no NaN or infinity), got {args.poison_value}")
    if args.poison_every and args.poison_value == infer_body("", "", [1], "")["inputs"][0]["data"][0]:
        p.error(f"--poison-value {args.poison_value} is what every request's first element is already")
    return args


def main(argv: list[str] | None = None) -> int:
    result = asyncio.run(run(parse_args(argv)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
