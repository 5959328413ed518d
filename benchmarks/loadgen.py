"""Load generator, run as its own process: `python -m benchmarks.loadgen --url ... --body ... MODE`. Prints one JSON.

Modes (all bounded in time and in request count; loopback targets only):

- `closed`: `--concurrency` clients over HTTP (aiohttp, one kept-alive connection each), or over OIP v2 gRPC
  (`--protocol grpc`: `grpc.aio`, one channel, the `ModelInferRequest` serialized once, bytes in and out). Each
  client sends its next request when the previous one is answered; clients stop sending at the window's end.
- `open`: Poisson arrivals at `--rate`/s, send times drawn in advance (seeded); latency counts from the scheduled
  time (no coordinated omission). Arrivals beyond `--max-in-flight` are not sent and count as `client_cap` errors.
- `flood`: `--connections` raw HTTP/1.1 keep-alive sockets (asyncio streams, pre-encoded request bytes, no HTTP
  library), each sending its next request as soon as the previous answer is read; a dropped connection is
  reopened. The cheapest client this side of C, so that the server saturates before the generator does.

Accounting (`benchmarks.accounting.summarize`): the measurement window is `[warmup, warmup + duration]` after the
start (`--start-at`, a `time.time()` shared by processes that must overlap). Closed loop and flood: requests
answered inside the window. Open loop: requests scheduled inside the window; only those answered inside it count
toward throughput, the rest are reported as outstanding. Latency percentiles are over successes (HTTP 200 / gRPC
OK) only; other statuses are counted per code, transport errors per kind (`accounting.error_kind`), and requests
still unanswered `--drain` seconds after the window are cancelled and counted as `unfinished`. Nothing aborts the
run: every exception of a request becomes a counted outcome.

Self-checks, measured over the window: this process's CPU time / wall time (`client_cpu_util`; near 1.0 means the
generator, not the server, was the bottleneck) and how late a 10 ms timer on its event loop fires
(`loop_lag_ms`). With `--server-pid`, CPU samples of the server's process tree are taken at the window's edges.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp  # imported up front: a first error must not pay for the import inside a window

from benchmarks.accounting import (
    CLIENT_CAP,
    Outcome,
    Window,
    error_kind,
    loadavg,
    percentile,
    sample_to_json,
    sample_tree,
    summarize,
)

MAX_REQUESTS = 2_000_000
TRANSPORT_ERROR_BACKOFF_S = 0.01
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"

Body = tuple[bytes, dict[str, str]]


class Clock:
    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.origin


class Run:
    """State shared by the tasks of one run: the clock, the window, every outcome, the self-checks."""

    def __init__(self, window: Window, drain: float, server_pid: int | None, max_requests: int) -> None:
        self.clock = Clock()
        self.window = window
        self.drain = drain
        self.server_pid = server_pid
        self.max_requests = max_requests
        self.outcomes: list[Outcome] = []
        self.extra: dict[str, Any] = {}
        self.lags: list[float] = []
        self.gauges: dict[str, Callable[[], Any]] = {}

    def new(self) -> Outcome | None:
        if len(self.outcomes) >= self.max_requests:
            return None
        outcome = Outcome(sent=self.clock.now())
        self.outcomes.append(outcome)
        return outcome

    def finish(self, outcome: Outcome, status: int | str | None = None, exc: BaseException | None = None) -> None:
        outcome.done = self.clock.now()
        if exc is not None:
            outcome.error = error_kind(exc)
        else:
            outcome.status = status

    def open(self) -> bool:
        return self.clock.now() < self.window.end and len(self.outcomes) < self.max_requests

    async def sleep_until(self, t: float) -> None:
        delay = t - self.clock.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _edges(self) -> None:
        """Samples at the window's start and end: server tree CPU, own CPU time, load average."""
        for edge in ("start", "end"):
            await self.sleep_until(getattr(self.window, edge))
            self.extra[f"client_cpu_{edge}"] = time.process_time()
            self.extra[f"loadavg_{edge}"] = loadavg()
            for name, gauge in self.gauges.items():
                self.extra[f"{name}_{edge}"] = gauge()
            if self.server_pid is not None:
                self.extra[f"server_cpu_{edge}"] = sample_to_json(sample_tree(self.server_pid))

    async def _lag(self) -> None:
        while self.clock.now() < self.window.end:
            t = self.clock.now()
            await asyncio.sleep(0.01)
            if t >= self.window.start:
                self.lags.append(max(0.0, self.clock.now() - t - 0.01))

    async def drive(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Wait for `tasks` until the window's end + drain, then cancel what is left (counted as unfinished)."""
        monitors = [asyncio.ensure_future(self._edges()), asyncio.ensure_future(self._lag())]
        remaining = max(0.0, self.window.end + self.drain - self.clock.now())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=remaining)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*monitors, return_exceptions=True)

    def result(self, *, open_loop: bool) -> dict[str, Any]:
        summary = summarize(self.outcomes, self.window, open_loop=open_loop)
        lags = sorted(self.lags)
        cpu_start, cpu_end = self.extra.pop("client_cpu_start", None), self.extra.pop("client_cpu_end", None)
        summary.update(
            answered_total=sum(1 for o in self.outcomes if o.done is not None and o.error is None),
            sent_total=len(self.outcomes),
            client_cpu_util=(cpu_end - cpu_start) / self.window.seconds if cpu_start is not None and cpu_end else None,
            loop_lag_ms={
                "p99": (percentile(lags, 0.99) or 0.0) * 1000,
                "max": (lags[-1] if lags else 0.0) * 1000,
            },
            **self.extra,
        )
        return summary


# -- HTTP (aiohttp) ------------------------------------------------------------------------------------------------
async def closed_http(run: Run, url: str, bodies: list[Body], concurrency: int, request_timeout: float) -> None:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            n = 0
            while run.open() and (outcome := run.new()) is not None:
                body = bodies[(index + n) % len(bodies)]
                n += 1
                if not await post(session, url, body, run, outcome):
                    await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)

        await run.drive([asyncio.ensure_future(client(i)) for i in range(concurrency)])


async def post(session: aiohttp.ClientSession, url: str, body: Body, run: Run, outcome: Outcome) -> bool:
    """Send one request and record its outcome (status, or the transport error); False on a transport error."""
    data, headers = body
    try:
        async with session.post(url, data=data, headers=headers) as response:
            await response.read()
            run.finish(outcome, response.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        run.finish(outcome, exc=exc)
        return False
    return True


async def open_http(
    run: Run, url: str, bodies: list[Body], rate: float, max_in_flight: int, seed: int, request_timeout: float
) -> None:
    rng = random.Random(seed)
    schedule: list[float] = []
    t = 0.0
    while len(schedule) < run.max_requests:
        t += rng.expovariate(rate)
        if t >= run.window.end:
            break
        schedule.append(t)
    in_flight = 0
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(outcome: Outcome, body: Body) -> None:
            nonlocal in_flight
            try:
                await post(session, url, body, run, outcome)
            finally:
                in_flight -= 1

        async def sender() -> list[asyncio.Task[None]]:
            nonlocal in_flight
            tasks: list[asyncio.Task[None]] = []
            for i, scheduled in enumerate(schedule):
                await run.sleep_until(scheduled)
                outcome = Outcome(sent=scheduled)  # latency from the schedule, not from when we got round to it
                run.outcomes.append(outcome)
                if in_flight >= max_in_flight:
                    outcome.done, outcome.error = scheduled, CLIENT_CAP
                    continue
                in_flight += 1
                tasks.append(asyncio.ensure_future(one(outcome, bodies[i % len(bodies)])))
            return tasks

        sending = asyncio.ensure_future(sender())
        monitors = asyncio.ensure_future(run.drive([]))
        tasks = await sending
        remaining = max(0.0, run.window.end + run.drain - run.clock.now())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=remaining)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await monitors


# -- flood (raw HTTP/1.1 over asyncio streams) -------------------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response (Content-Length bodies only); returns (status, server closes the connection)."""
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    status = int(line.split(None, 2)[1])
    length, close = 0, False
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n"):
            break
        if not header:
            raise asyncio.IncompleteReadError(b"", None)
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


def raw_request(url: str, body: Body) -> bytes:
    parts = urlsplit(url)
    data, headers = body
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def flood(run: Run, url: str, bodies: list[Body], connections: int) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [raw_request(url, body) for body in bodies]
    opened = 0
    open_now = 0
    run.gauges["connections_open"] = lambda: open_now

    async def connection(index: int) -> None:
        nonlocal opened, open_now
        n = index
        while run.open():
            outcome = run.new()
            if outcome is None:
                return
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                run.finish(outcome, exc=exc)
                await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)
                continue
            opened += 1
            open_now += 1
            try:
                while True:
                    writer.write(requests[n % len(requests)])
                    n += 1
                    status, close = await read_response(reader)
                    run.finish(outcome, status)
                    if close or not run.open() or (outcome := run.new()) is None:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                run.finish(outcome, exc=exc)
                await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)
            finally:
                open_now -= 1
                writer.close()

    await run.drive([asyncio.ensure_future(connection(i)) for i in range(connections)])
    run.extra["connections_opened"] = opened


# -- gRPC (grpc.aio) -----------------------------------------------------------------------------------------------
def grpc_request_bytes(model: str, body_path: str, header_length: int | None) -> bytes:
    """A `ModelInferRequest` equivalent to one HTTP body, tensors as `raw_input_contents` (the binary form gRPC
    clients use), serialized once with the runtime's generated stubs."""
    from benchmarks.grpc_stubs import load_stubs

    pb2 = load_stubs().pb2
    raw = Path(body_path).read_bytes()
    header = json.loads(raw[:header_length] if header_length else raw)
    request = pb2.ModelInferRequest(model_name=model, id=str(header.get("id", "")))
    offset = header_length or 0
    import numpy as np

    dtypes = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16, "UINT8": np.uint8}
    for entry in header["inputs"]:
        tensor = request.inputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        del tensor  # the contents go in raw_input_contents, in input order
        size = entry.get("parameters", {}).get("binary_data_size")
        if size is not None:
            request.raw_input_contents.append(raw[offset : offset + size])
            offset += size
        else:
            request.raw_input_contents.append(np.asarray(entry["data"], dtype=dtypes[entry["datatype"]]).tobytes())
    return request.SerializeToString()


async def closed_grpc(run: Run, target: str, payloads: list[bytes], concurrency: int, request_timeout: float) -> None:
    import grpc

    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    ) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
        except TimeoutError:
            raise SystemExit(f"no gRPC server answered on {target} within 10 s") from None
        from benchmarks.grpc_stubs import load_stubs

        # One checked call first: an OK with no outputs must not pass for a served request.
        pb2 = load_stubs().pb2
        check = channel.unary_unary(GRPC_INFER, response_deserializer=pb2.ModelInferResponse.FromString)
        response = await check(payloads[0], timeout=request_timeout)
        sizes = [len(raw) for raw in response.raw_output_contents]
        if not response.outputs or not (any(sizes) or any(o.ListFields() for o in response.outputs)):
            raise RuntimeError(f"gRPC ModelInfer answered OK without output data: {response}")
        run.extra["grpc_check"] = {"outputs": [o.name for o in response.outputs], "raw_bytes": sizes}
        infer = channel.unary_unary(GRPC_INFER)  # no serializers: the request goes as these bytes

        async def client(index: int) -> None:
            n = 0
            while run.open() and (outcome := run.new()) is not None:
                payload = payloads[(index + n) % len(payloads)]
                n += 1
                try:
                    await infer(payload, timeout=request_timeout)
                    run.finish(outcome, 200)
                except asyncio.CancelledError:
                    raise
                except grpc.aio.AioRpcError as exc:
                    run.finish(outcome, f"grpc_{exc.code().name}")
                except Exception as exc:
                    run.finish(outcome, exc=exc)
                    await asyncio.sleep(TRANSPORT_ERROR_BACKOFF_S)

        await run.drive([asyncio.ensure_future(client(i)) for i in range(concurrency)])


# -- command line --------------------------------------------------------------------------------------------------
def parse_bodies(specs: list[str]) -> list[Body]:
    bodies: list[Body] = []
    for spec in specs:
        path, _, header_length = spec.partition(":")
        headers = {"Content-Type": "application/json"}
        if header_length:
            headers = {"Inference-Header-Content-Length": header_length, "Content-Type": "application/octet-stream"}
        bodies.append((Path(path).read_bytes(), headers))
    return bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/v2/models/NAME/infer")
    parser.add_argument(
        "--body",
        action="append",
        required=True,
        help="pre-encoded request body file, PATH or PATH:JSON_HEADER_LENGTH (binary); repeatable",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--drain", type=float, default=10.0, help="longest wait for answers after the window")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--start-at", type=float, help="time.time() at which the run starts (to align processes)")
    parser.add_argument("--server-pid", type=int, help="sample this process tree's CPU at the window's edges")
    parser.add_argument("--pin", type=int, help="run on this CPU only")
    sub = parser.add_subparsers(dest="mode", required=True)
    closed = sub.add_parser("closed")
    closed.add_argument("--concurrency", type=int, required=True)
    closed.add_argument("--protocol", choices=["http", "grpc"], default="http")
    closed.add_argument("--grpc-target", help="127.0.0.1:PORT (with --protocol grpc)")
    closed.add_argument("--model", help="model name (with --protocol grpc)")
    opened = sub.add_parser("open")
    opened.add_argument("--rate", type=float, required=True)
    opened.add_argument("--max-in-flight", type=int, default=4096)
    opened.add_argument("--seed", type=int, default=0)
    flooded = sub.add_parser("flood")
    flooded.add_argument("--connections", type=int, required=True)
    args = parser.parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("only loopback (http://127.0.0.1:PORT) targets are allowed")
    grpc_mode = args.mode == "closed" and args.protocol == "grpc"
    if grpc_mode and not (args.grpc_target or "").startswith("127.0.0.1:"):
        parser.error("--protocol grpc needs --grpc-target 127.0.0.1:PORT")
    if args.mode == "flood":
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = args.connections + 64
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    bodies = parse_bodies(args.body)
    payloads: list[bytes] = []
    if grpc_mode:
        for spec in args.body:
            path, _, header_length = spec.partition(":")
            payloads.append(grpc_request_bytes(args.model, path, int(header_length) if header_length else None))
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.time()))
    window = Window(args.warmup, args.warmup + args.duration)
    run = Run(window, args.drain, args.server_pid, args.max_requests)

    async def go() -> None:
        run.clock = Clock()
        if args.mode == "closed" and grpc_mode:
            await closed_grpc(run, args.grpc_target, payloads, args.concurrency, args.request_timeout)
        elif args.mode == "closed":
            await closed_http(run, args.url, bodies, args.concurrency, args.request_timeout)
        elif args.mode == "open":
            await open_http(run, args.url, bodies, args.rate, args.max_in_flight, args.seed, args.request_timeout)
        else:
            await flood(run, args.url, bodies, args.connections)

    runner: Callable[[Awaitable[None]], None] = asyncio.run  # type: ignore[assignment]
    if not grpc_mode:  # grpc.aio wants the default event loop; the HTTP clients get the cheaper uvloop if present
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run  # type: ignore[assignment]
    runner(go())
    json.dump(run.result(open_loop=args.mode == "open"), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
