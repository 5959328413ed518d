"""The benchmark's accounting (`benchmarks.accounting`, `benchmarks.loadgen`): no server, no sleeps.

Window filtering of open-loop completions, transport errors counted per kind, percentiles over successes only,
the drift → "no verdict" rule, and host CPU per request from two `/proc` samples of a process tree.
"""

from __future__ import annotations

import asyncio
import errno
import sys
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `benchmarks` is a top-level directory of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import finish_row  # noqa: E402
from benchmarks.accounting import (  # noqa: E402
    CLIENT_CAP,
    UNFINISHED,
    CpuSample,
    Limit,
    Outcome,
    Window,
    cpu_delta,
    cpu_us_per_request,
    error_kind,
    failures,
    parse_stat,
    percentile,
    sample_to_json,
    sample_tree,
    summarize,
    verdict,
)
from benchmarks.loadgen import raw_request, read_response  # noqa: E402

WINDOW = Window(1.0, 3.0)  # warm-up 1 s, then a 2 s window


# -- open loop: the window ---------------------------------------------------------------------------------------
def test_open_loop_counts_only_completions_inside_the_window() -> None:
    outcomes = [
        Outcome(sent=0.5, done=1.2, status=200),  # scheduled in the warm-up: not this window's request at all
        Outcome(sent=1.0, done=1.1, status=200),  # in, answered in: counts
        Outcome(sent=1.5, done=1.8, status=200),  # counts
        Outcome(sent=2.9, done=3.4, status=200),  # scheduled in, answered after the end: outstanding, not counted
        Outcome(sent=2.95, done=None),  # never answered before the drain ended
        Outcome(sent=3.0, done=3.01, status=200),  # scheduled at the end: the next window's
    ]
    summary = summarize(outcomes, WINDOW, open_loop=True)
    assert summary["requests"] == 3 + 1  # 1.0, 1.5, 2.9, 2.95
    assert summary["ok_in_window"] == 2
    assert summary["throughput"] == pytest.approx(2 / 2.0)  # not 3/2 or 4/2: late answers are not throughput
    assert summary["outstanding_at_end"] == 2  # the late one and the unfinished one
    assert summary["late_ok"] == 1
    assert summary["errors"] == {UNFINISHED: 1}
    # The late success's latency still counts (it is the slow tail), from its scheduled time.
    assert summary["p99_ms"] == pytest.approx(500.0)
    assert summary["p50_ms"] == pytest.approx(300.0)  # of 100, 300 and 500 ms


def test_open_loop_throughput_ratio_cannot_exceed_the_arrivals_in_the_window() -> None:
    """The old accounting divided every answer of the window's arrivals by the window: with a backlog draining
    after the end, that gave ratios above 1. Only answers inside the window count now."""
    arrivals = [Outcome(sent=1.0 + i * 0.01, done=1.0 + i * 0.01 + 1.5, status=200) for i in range(200)]
    summary = summarize(arrivals, WINDOW, open_loop=True)
    answered_inside = sum(1 for o in arrivals if o.done is not None and o.done <= 3.0)
    assert answered_inside == 51  # sent at 1.00 .. 1.50
    assert summary["throughput"] == pytest.approx(answered_inside / 2.0)
    assert summary["outstanding_at_end"] == 149


def test_client_cap_drops_are_failures_not_outstanding() -> None:
    outcomes = [Outcome(sent=1.5, done=1.5, error=CLIENT_CAP), Outcome(sent=1.6, done=1.7, status=200)]
    summary = summarize(outcomes, WINDOW, open_loop=True)
    assert summary["errors"] == {CLIENT_CAP: 1}
    assert summary["outstanding_at_end"] == 0
    assert summary["error_rate"] == pytest.approx(0.5)


def test_closed_loop_window_is_by_completion_time() -> None:
    outcomes = [
        Outcome(sent=0.9, done=1.05, status=200),  # sent in the warm-up, answered inside: counts
        Outcome(sent=2.9, done=3.2, status=200),  # answered after the end: outstanding
        Outcome(sent=0.1, done=0.2, status=200),  # warm-up
    ]
    summary = summarize(outcomes, WINDOW, open_loop=False)
    assert summary["ok"] == 1
    assert summary["throughput"] == pytest.approx(0.5)
    assert summary["outstanding_at_end"] == 1


# -- errors and statuses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection_refused"),
        (aiohttp.ClientConnectorError(None, ConnectionRefusedError(errno.ECONNREFUSED, "x")), "connection_refused"),  # type: ignore[arg-type]
        (ConnectionResetError(errno.ECONNRESET, "reset"), "connection_reset"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "reset by peer"), "connection_reset"),
        (BrokenPipeError(errno.EPIPE, "pipe"), "broken_pipe"),
        (aiohttp.ServerDisconnectedError(), "server_disconnected"),
        (asyncio.IncompleteReadError(b"", 10), "server_disconnected"),
        (TimeoutError(), "timeout"),
        (aiohttp.ServerTimeoutError("read"), "timeout"),
        (OSError(errno.EHOSTUNREACH, "unreachable"), "os_error_EHOSTUNREACH"),
        (ValueError("bad"), "ValueError"),
    ],
)
def test_error_kind(exc: BaseException, kind: str) -> None:
    assert error_kind(exc) == kind


def test_error_kind_follows_the_cause_chain() -> None:
    outer = aiohttp.ClientPayloadError("body cut")
    outer.__cause__ = ConnectionResetError(errno.ECONNRESET, "reset")
    assert error_kind(outer) == "connection_reset"
    assert error_kind(aiohttp.ClientPayloadError("body cut")) == "payload_error"


def test_errors_counted_per_kind_and_statuses_per_code() -> None:
    outcomes = [
        Outcome(sent=1.1, done=1.2, status=200),
        Outcome(sent=1.1, done=1.3, status=429),
        Outcome(sent=1.1, done=1.4, status=429),
        Outcome(sent=1.1, done=1.5, status=503),
        Outcome(sent=1.2, done=1.6, error="connection_reset"),
        Outcome(sent=1.2, done=1.7, error="connection_refused"),
        Outcome(sent=1.2, done=1.8, error="connection_refused"),
        Outcome(sent=1.2, done=1.9, status="grpc_RESOURCE_EXHAUSTED"),
    ]
    summary = summarize(outcomes, WINDOW, open_loop=False)
    assert summary["statuses"] == {"200": 1, "429": 2, "503": 1, "grpc_RESOURCE_EXHAUSTED": 1}
    assert summary["errors"] == {"connection_refused": 2, "connection_reset": 1}
    assert summary["failed"] == 7
    assert summary["error_rate"] == pytest.approx(7 / 8)
    assert summary["throughput"] == pytest.approx(0.5)
    assert failures(summary) == {
        "HTTP 429": 2,
        "HTTP 503": 1,
        "grpc_RESOURCE_EXHAUSTED": 1,
        "connection_refused": 2,
        "connection_reset": 1,
    }


# -- percentiles over successes only -------------------------------------------------------------------------------
def test_percentiles_are_over_successes_only() -> None:
    ok = [Outcome(sent=1.0, done=1.0 + ms / 1000, status=200) for ms in range(10, 110, 10)]  # 10..100 ms
    fast_429 = [Outcome(sent=1.0, done=1.0005, status=429) for _ in range(90)]  # 0.5 ms each
    errors = [Outcome(sent=1.0, done=1.0001, error="connection_reset") for _ in range(50)]
    summary = summarize(ok + fast_429 + errors, WINDOW, open_loop=True)
    assert summary["ok"] == 10
    assert summary["p50_ms"] == pytest.approx(50.0)  # with the 429s mixed in this would be 0.5 ms
    assert summary["p90_ms"] == pytest.approx(90.0)
    assert summary["p99_ms"] == pytest.approx(100.0)
    assert summary["failed"] == 140


def test_no_success_means_no_percentile() -> None:
    summary = summarize([Outcome(sent=1.0, done=1.1, status=429)], WINDOW, open_loop=True)
    assert summary["p50_ms"] is None
    assert summary["p99_ms"] is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


# -- drift -> no verdict ---------------------------------------------------------------------------------------------
def test_drifted_limit_withholds_the_verdict() -> None:
    limit = Limit("bs 8", 400.0, 300.0)
    assert limit.drift == pytest.approx(100 / 350)
    assert limit.drifted
    line = verdict("throughput at 32 clients", 0.9, ">=", 0.85, "", [limit])
    assert line.endswith("no verdict (limit drifted 400→300 rows/s)")
    assert "measured 0.9 vs target >= 0.85" in line
    assert "met" not in line.split("→", 1)[1].replace("no verdict", "")


def test_steady_limit_gives_a_verdict_either_way() -> None:
    limit = Limit("bs 8", 400.0, 380.0)  # 5.1 %: under the 10 % threshold
    assert not limit.drifted
    assert verdict("throughput", 0.9, ">=", 0.85, "", [limit]).endswith("→ met")
    assert verdict("throughput", 0.8, ">=", 0.85, "", [limit]).endswith("→ missed")
    ms = Limit("bs 1 graph", 10.0, 10.5, "ms")
    assert verdict("p50 at 1 client", 11.4, "<=", 11.5, " ms", [ms]).endswith("→ met")
    assert verdict("p50 at 1 client", 11.6, "<=", 11.5, " ms", [ms]).endswith("→ missed")


def test_any_drifted_dependency_withholds_and_none_measured_is_no_verdict() -> None:
    steady, drifted = Limit("a", 100.0, 101.0), Limit("b", 10.0, 12.0, "ms")
    assert "no verdict (limit drifted 10→12 ms)" in verdict("x", 1.0, ">=", 0.5, "", [steady, drifted])
    assert verdict("x", None, ">=", 0.5, "", [steady]).endswith("no verdict (not measured)")


# -- host CPU from /proc -------------------------------------------------------------------------------------------
def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime ...
    return f"{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 3 0 1 1 1\n"


def _fake_proc(root: Path, procs: dict[int, tuple[int, int, int, int, int]], children: dict[int, list[int]]) -> Path:
    """procs: pid -> (ppid, utime, stime, cutime, cstime); children: pid -> child pids (listed on its main task)."""
    for pid, (ppid, utime, stime, cutime, cstime) in procs.items():
        d = root / str(pid)
        (d / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
        (d / "stat").write_text(_stat(pid, "python3 (x) y", ppid, utime, stime, cutime, cstime))
        (d / "task" / str(pid) / "children").write_text(" ".join(map(str, children.get(pid, []))))
    return root


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    assert parse_stat(_stat(42, "a) b (c", 7, 11, 22, 33, 44)) == (7, 11, 22, 33, 44)


def test_cpu_per_request_from_two_samples_of_the_whole_tree(tmp_path: Path) -> None:
    # Server 100 (event loop) with worker 101, which has a child 102 (e.g. a forkserver's worker).
    before_dir = _fake_proc(
        tmp_path / "before",
        {100: (1, 1000, 200, 0, 0), 101: (100, 5000, 100, 0, 0), 102: (101, 10, 0, 0, 0), 999: (1, 7, 7, 0, 0)},
        {100: [101], 101: [102]},
    )
    after_dir = _fake_proc(
        tmp_path / "after",
        {100: (1, 1100, 250, 0, 0), 101: (100, 5600, 120, 0, 0), 102: (101, 40, 0, 0, 0), 999: (1, 900, 9, 0, 0)},
        {100: [101], 101: [102]},
    )
    before, after = sample_tree(100, before_dir), sample_tree(100, after_dir)
    assert set(before.own) == {100, 101, 102}  # 999 is not in the tree
    delta = cpu_delta(before, after, clk_tck=100)
    assert delta["root"] == pytest.approx(1.50)  # (1100+250) - (1000+200) = 150 ticks
    assert delta["children"] == pytest.approx(6.50)  # worker 620 + its child 30 ticks
    assert delta["total"] == pytest.approx(8.00)
    per_request = cpu_us_per_request(before, after, requests=4000, clk_tck=100)
    assert per_request["total"] == pytest.approx(2000.0)  # 8 s / 4000 requests = 2 ms
    assert per_request["root"] == pytest.approx(375.0)
    assert per_request["children"] == pytest.approx(1625.0)
    assert cpu_us_per_request(before, after, requests=0, clk_tck=100)["total"] is None


def test_cpu_of_a_worker_that_exited_and_was_reaped(tmp_path: Path) -> None:
    before = CpuSample(root=100, own={100: 1000, 101: 300}, reaped=0)
    # The worker used 50 more ticks, exited and was waited for (350 ticks into cutime+cstime); a new one started.
    after = CpuSample(root=100, own={100: 1010, 102: 20}, reaped=350)
    delta = cpu_delta(before, after, clk_tck=100)
    assert delta["root"] == pytest.approx(0.10)
    assert delta["children"] == pytest.approx((50 + 20) / 100)


def test_tree_falls_back_to_parent_ids_without_children_files(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {100: (1, 1, 1, 0, 0), 101: (100, 2, 2, 0, 0), 102: (101, 3, 3, 0, 0)}, {})
    for pid in (100, 101, 102):
        (proc / str(pid) / "task" / str(pid) / "children").unlink()
    sample = sample_tree(100, proc)
    assert sample.own == {100: 2, 101: 4, 102: 6}


def test_finish_row_divides_window_cpu_by_answers_in_the_window() -> None:
    before = CpuSample(root=100, own={100: 1000, 101: 5000})
    after = CpuSample(root=100, own={100: 1100, 101: 5300})
    result = {
        "statuses": {"200": 150, "429": 50},  # 200 answers in the window
        "server_cpu_start": sample_to_json(before),
        "server_cpu_end": sample_to_json(after),
    }
    metrics_before = {"neuron_runtime_batch_size_rows_count": 10.0, "neuron_runtime_batch_size_rows_sum": 40.0}
    metrics_after = {"neuron_runtime_batch_size_rows_count": 30.0, "neuron_runtime_batch_size_rows_sum": 160.0}
    row = finish_row(result, metrics_before, metrics_after)
    ticks = 100  # os.sysconf("SC_CLK_TCK") on Linux
    assert row["cpu_us"]["total"] == pytest.approx(400 / ticks * 1e6 / 200)
    assert row["cpu_us"]["root"] == pytest.approx(100 / ticks * 1e6 / 200)
    assert row["mean_batch"] == pytest.approx(6.0)


# -- the flood client's HTTP framing ---------------------------------------------------------------------------------
async def test_read_response_parses_status_length_and_close() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 5\r\nRetry-After: 1\r\n\r\nhello")
    reader.feed_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}")
    reader.feed_eof()
    assert await read_response(reader) == (429, False)
    assert await read_response(reader) == (200, True)
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await read_response(reader)
    assert error_kind(info.value) == "server_disconnected"


def test_raw_request_frames_the_body() -> None:
    raw = raw_request("http://127.0.0.1:8080/v2/models/m1/infer", (b'{"a":1}', {"Content-Type": "application/json"}))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b'{"a":1}'
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/m1/infer HTTP/1.1"
    assert "Content-Length: 7" in lines
    assert "Host: 127.0.0.1:8080" in lines
