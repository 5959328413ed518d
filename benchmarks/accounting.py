"""The benchmark's bookkeeping, kept free of I/O so that it can be tested on its own.

- `Outcome` / `summarize`: what one load window measured. Throughput counts only successes that *completed inside*
  the measurement window; latency percentiles are over successes only; every non-success is counted, HTTP
  statuses per code and transport errors per kind (`error_kind`).
- `Limit` / `verdict`: a target compared with a measurement, withheld ("no verdict") when an in-process limit it
  depends on drifted between the measurement before and after the servers.
- `parse_stat` / `CpuSample` / `cpu_delta`: host CPU of a process tree from `/proc/<pid>/stat` samples.
"""

from __future__ import annotations

import asyncio
import errno
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUCCESS = 200
DRIFT_THRESHOLD = 0.10
"""An in-process limit that moved by more than this (|before - after| / mean) between the measurement before and
after the servers withholds every verdict that depends on it."""


# -- one request -----------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request. Times are seconds on the load generator's clock, relative to its start.

    `sent`: when it was sent (closed loop) or scheduled to be sent (open loop: latency counts from the schedule, so
    a slow server cannot hide its queueing). `done`: when the answer (or the error) came; `None` if it never came
    before the load generator gave up on it. `status`: the HTTP status (gRPC: 200 for OK, else the code's name);
    `error`: the transport error's kind, when there was no status at all.
    """

    sent: float
    done: float | None = None
    status: int | str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS and self.error is None and self.done is not None


UNFINISHED = "unfinished"
"""Error kind of a request still without an answer when the load generator stopped waiting (after its drain)."""
CLIENT_CAP = "client_cap"
"""Error kind of an open-loop arrival the load generator did not send because its in-flight cap was reached."""


def error_kind(exc: BaseException) -> str:
    """A short, stable name for a transport failure (no HTTP status came back)."""
    import aiohttp

    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError on 3.11+
        return "timeout"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)  # aiohttp.ClientConnectorError wraps the socket's error
        for candidate in (current, os_error):
            if isinstance(candidate, ConnectionRefusedError) or getattr(candidate, "errno", None) == errno.ECONNREFUSED:
                return "connection_refused"
            if isinstance(candidate, ConnectionResetError) or getattr(candidate, "errno", None) == errno.ECONNRESET:
                return "connection_reset"
            if isinstance(candidate, BrokenPipeError) or getattr(candidate, "errno", None) == errno.EPIPE:
                return "broken_pipe"
            if getattr(candidate, "errno", None) == errno.ETIMEDOUT:
                return "timeout"
        current = current.__cause__ or current.__context__
    if isinstance(exc, asyncio.IncompleteReadError):
        return "server_disconnected"  # the peer closed the connection in the middle of an answer
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload_error"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"os_error_{errno.errorcode.get(exc.errno, exc.errno)}"
    return type(exc).__name__


# -- summaries -------------------------------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least `p` of the values at or below it)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Window:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def summarize(outcomes: Iterable[Outcome], window: Window, *, open_loop: bool) -> dict[str, Any]:
    """The figures of one window.

    Closed loop: the window's requests are those *answered* inside it (`start <= done <= end`). Open loop: those
    *scheduled* inside it (`start <= sent < end`), whenever they finished; their latency counts even when they
    finished after the window (late answers raise the percentiles rather than vanish), but only the ones that
    finished inside it count toward throughput. In both, `outstanding_at_end` is how many requests sent before
    the window's end had no answer yet at its end.
    """
    outcomes = list(outcomes)
    if open_loop:
        members = [o for o in outcomes if window.start <= o.sent < window.end]
    else:
        members = [o for o in outcomes if o.done is not None and window.start <= o.done <= window.end]
    in_window_ok = [o for o in members if o.ok and o.done is not None and o.done <= window.end]
    latencies = sorted((o.done - o.sent) * 1000.0 for o in members if o.ok and o.done is not None)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for o in members:
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
        elif o.done is None:
            errors[UNFINISHED] = errors.get(UNFINISHED, 0) + 1
        else:
            key = str(o.status)
            statuses[key] = statuses.get(key, 0) + 1
    if open_loop:
        pending = [o for o in members if o.error != CLIENT_CAP]
    else:
        pending = [o for o in outcomes if o.sent < window.end]
    outstanding = sum(1 for o in pending if o.done is None or o.done > window.end)
    failed = len(members) - sum(1 for o in members if o.ok)
    return {
        "window_s": window.seconds,
        "requests": len(members),
        "ok": sum(1 for o in members if o.ok),
        "ok_in_window": len(in_window_ok),
        "late_ok": sum(1 for o in members if o.ok and o.done is not None and o.done > window.end),
        "throughput": len(in_window_ok) / window.seconds if window.seconds > 0 else 0.0,
        "statuses": dict(sorted(statuses.items())),
        "errors": dict(sorted(errors.items())),
        "failed": failed,
        "error_rate": failed / len(members) if members else 0.0,
        "outstanding_at_end": outstanding,
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
    }


def failures(summary: Mapping[str, Any]) -> dict[str, int]:
    """Every non-success of a summary in one mapping: HTTP/gRPC statuses other than 200 and transport errors."""
    bad = {f"HTTP {k}" if k.isdigit() else k: v for k, v in summary["statuses"].items() if k != str(SUCCESS)}
    bad.update(summary["errors"])
    return bad


# -- limits and verdicts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limit:
    """An in-process figure measured before and after the servers (rows/s, or ms for a graph time)."""

    name: str
    before: float
    after: float
    unit: str = "rows/s"

    @property
    def value(self) -> float:
        return (self.before + self.after) / 2

    @property
    def drift(self) -> float:
        return abs(self.before - self.after) / self.value if self.value else math.inf

    @property
    def drifted(self) -> bool:
        return self.drift > DRIFT_THRESHOLD

    def describe(self) -> str:
        flag = " DRIFTED" if self.drifted else ""
        return f"{self.name} {self.before:.4g}→{self.after:.4g} {self.unit} (drift {self.drift:.1%}{flag})"


def verdict(
    what: str, measured: float | None, op: str, target: float, unit: str, depends_on: Sequence[Limit] = ()
) -> str:
    """`what: measured <value> vs target <op> <target> → met/missed`, or no verdict when a limit drifted."""
    shown = "n/a" if measured is None else f"{measured:.3g}{unit}"
    line = f"{what}: measured {shown} vs target {op} {target:.3g}{unit}"
    for limit in depends_on:
        if limit.drifted:
            return f"{line} → no verdict (limit drifted {limit.before:.4g}→{limit.after:.4g} {limit.unit})"
    if measured is None:
        return f"{line} → no verdict (not measured)"
    met = measured >= target if op == ">=" else measured <= target
    return f"{line} → {'met' if met else 'missed'}"


# -- host CPU from /proc ---------------------------------------------------------------------------------------------
def parse_stat(text: str) -> tuple[int, int, int, int, int]:
    """(ppid, utime, stime, cutime, cstime) in clock ticks from the text of `/proc/<pid>/stat`.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
    """
    rest = text.rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    return int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


@dataclass
class CpuSample:
    """CPU ticks of a process tree at one instant: `own[pid]` = utime + stime of each live process of the tree (all
    its threads), `reaped` = cutime + cstime of the root (descendants that exited and were waited for)."""

    root: int
    own: dict[int, int] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)
    reaped: int = 0


def cpu_delta(before: CpuSample, after: CpuSample, clk_tck: int) -> dict[str, float]:
    """CPU seconds the tree used between two samples: `root` (the server process itself: event loop, HTTP, gRPC,
    batching) and `children` (worker processes and any other descendant), `total` = both.

    A process that appears between the samples counts with all its ticks; a direct child of the root that exited
    and was reaped moves its ticks into the root's `reaped` count, so its ticks after `before` are counted there.
    """
    root = after.own.get(after.root, 0) - before.own.get(before.root, 0)
    children = 0
    for pid, ticks in after.own.items():
        if pid != after.root:
            children += ticks - before.own.get(pid, 0)
    gone = sum(t for pid, t in before.own.items() if pid != before.root and pid not in after.own)
    children += max(0, after.reaped - before.reaped - gone)
    return {"root": root / clk_tck, "children": children / clk_tck, "total": (root + children) / clk_tck}


def tree_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    """The root and all its live descendants, from `/proc/<pid>/task/<tid>/children` (falls back to scanning
    every `/proc/<pid>/stat` for parent ids where that file is missing)."""
    found = [root]
    queue = [root]
    fallback = False
    while queue:
        pid = queue.pop()
        kids: list[int] = []
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids += [int(k) for k in (task / "children").read_text().split()]
            except FileNotFoundError:
                fallback = True
                break
            except OSError:
                continue
        if fallback:
            break
        for kid in kids:
            if kid not in found:
                found.append(kid)
                queue.append(kid)
    if not fallback:
        return found
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parse_stat((entry / "stat").read_text())[0]
            except (OSError, IndexError, ValueError):
                continue
    found = [root]
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.append(pid)
                changed = True
    return found


def sample_tree(root: int, proc: Path = Path("/proc")) -> CpuSample:
    sample = CpuSample(root=root)
    for pid in tree_pids(root, proc):
        try:
            ppid, utime, stime, cutime, cstime = parse_stat((proc / str(pid) / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # exited between the listing and the read
        sample.own[pid] = utime + stime
        sample.parents[pid] = ppid
        if pid == root:
            sample.reaped = cutime + cstime
    return sample


def sample_to_json(sample: CpuSample) -> dict[str, Any]:
    return {"root": sample.root, "own": {str(k): v for k, v in sample.own.items()}, "reaped": sample.reaped}


def sample_from_json(data: Mapping[str, Any]) -> CpuSample:
    own = {int(k): int(v) for k, v in data["own"].items()}
    return CpuSample(root=int(data["root"]), own=own, reaped=int(data["reaped"]))


def cpu_us_per_request(before: CpuSample, after: CpuSample, requests: int, clk_tck: int) -> dict[str, float | None]:
    """Host CPU per answered request in µs (root, children, total); None when nothing was answered."""
    delta = cpu_delta(before, after, clk_tck)
    if requests <= 0:
        return dict.fromkeys(delta)
    return {k: v * 1e6 / requests for k, v in delta.items()}


def loadavg(path: Path = Path("/proc/loadavg")) -> tuple[float, float, float] | None:
    try:
        one, five, fifteen = path.read_text().split()[:3]
    except (OSError, ValueError):
        return None
    return float(one), float(five), float(fifteen)
