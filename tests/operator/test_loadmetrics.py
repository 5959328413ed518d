"""``resources.loadmetrics``: a serving pod's load read from the runtime's Prometheus text. Pure and fast.

The exposition is the REAL one: the runtime's own ``neuron_runtime.metrics.Metrics`` is driven (requests of several
codes, latencies, gauges) and rendered by prometheus_client, so a renamed family or a changed label set in the
runtime fails here. Hostile texts must give ``MetricsError`` (never another exception) or a sane value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from neuron_operator.resources.loadmetrics import (
    EMPTY_WINDOW,
    MAX_METRICS_BYTES,
    MetricsError,
    PodSample,
    Window,
    concurrency,
    merge,
    parse_metrics,
    quantile,
    window,
)
from neuron_runtime.metrics import LATENCY_BUCKETS, Metrics

INF = math.inf
LES = (*LATENCY_BUCKETS, INF)


def render(metrics: Metrics) -> str:
    return metrics.render().decode()


def runtime_text(drive: Callable[[Metrics], None]) -> str:
    metrics = Metrics()
    drive(metrics)
    return render(metrics)


def sample(
    at: float,
    requests: dict[str, float] | None = None,
    duration_sum: float = 0.0,
    duration_count: float = 0.0,
    buckets: tuple[tuple[float, float], ...] = (),
    in_flight: float = 0.0,
) -> PodSample:
    return PodSample(at, requests or {}, duration_sum, duration_count, buckets, in_flight, 0.0)


def cumulative(observations: list[float], les: tuple[float, ...] = LES) -> tuple[tuple[float, float], ...]:
    """Hand-computed cumulative buckets: how many observations are <= each bound."""
    return tuple((le, float(sum(1 for o in observations if o <= le))) for le in les)


# ============================================================================================ parse_metrics


def drive_mixed(m: Metrics) -> None:
    for code, n in (("200", 5), ("400", 1), ("404", 2), ("429", 3), ("500", 1), ("503", 1)):
        m.requests.labels(code).inc(n)
    for code, n in (("OK", 4), ("RESOURCE_EXHAUSTED", 2), ("INVALID_ARGUMENT", 1), ("UNAVAILABLE", 1)):
        m.grpc_requests.labels(code).inc(n)
    for seconds in OBSERVED:
        m.request_latency.observe(seconds)
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.inc()
    m.queue_depth.set(7)
    # families the operator does not read must not leak into the sample
    m.queue_wait.observe(3.0)
    m.batch_rows.observe(4)
    m.rejections.labels("queue_full").inc(3)


OBSERVED = [0.0003, 0.004, 0.004, 0.07, 0.7, 45.0]


def test_every_field_is_read_from_the_runtime_exposition() -> None:
    got = parse_metrics(runtime_text(drive_mixed), at=12.5)
    assert got.at == 12.5
    assert dict(got.requests) == {
        "200": 5,
        "400": 1,
        "404": 2,
        "429": 3,
        "500": 1,
        "503": 1,
        "grpc:OK": 4,
        "grpc:RESOURCE_EXHAUSTED": 2,
        "grpc:INVALID_ARGUMENT": 1,
        "grpc:UNAVAILABLE": 1,
    }
    assert got.duration_sum == pytest.approx(sum(OBSERVED))
    assert got.duration_count == len(OBSERVED)
    # the runtime's layout, sorted, +Inf last; 45 s lies beyond the last finite bound (30 s)
    assert got.buckets == cumulative(OBSERVED)
    assert [le for le, _ in got.buckets] == list(LES)
    assert got.buckets[-2:] == ((30.0, 5.0), (INF, 6.0))
    assert got.in_flight == 3
    assert got.queued_rows == 7


def test_a_fresh_runtime_reads_as_zero() -> None:
    """Labelled counters have no series before their first request (only HELP/TYPE lines): zero, not an error."""
    got = parse_metrics(render(Metrics()), at=0.0)
    assert dict(got.requests) == {}
    assert (got.duration_sum, got.duration_count, got.in_flight, got.queued_rows) == (0, 0, 0, 0)
    assert got.buckets == tuple((le, 0.0) for le in LES)


def test_missing_families_are_zero() -> None:
    """A runtime without gRPC (or an older one without the gauges) exposes fewer families."""
    got = parse_metrics('neuron_runtime_requests_total{code="200"} 2\n', at=1.0)
    assert dict(got.requests) == {"200": 2}
    assert got.buckets == ()
    assert (got.duration_sum, got.duration_count, got.in_flight, got.queued_rows) == (0, 0, 0, 0)


def test_label_sets_are_summed() -> None:
    """The runtime's latency histogram has no labels today; one per protocol (or per model) must add up."""
    text = "\n".join(
        [
            "# TYPE neuron_runtime_request_duration_seconds histogram",
            'neuron_runtime_request_duration_seconds_bucket{protocol="http",le="0.1"} 3',
            'neuron_runtime_request_duration_seconds_bucket{protocol="http",le="1.0"} 4',
            'neuron_runtime_request_duration_seconds_bucket{protocol="http",le="+Inf"} 5',
            'neuron_runtime_request_duration_seconds_sum{protocol="http"} 2.5',
            'neuron_runtime_request_duration_seconds_count{protocol="http"} 5',
            'neuron_runtime_request_duration_seconds_bucket{protocol="grpc",le="0.1"} 1',
            'neuron_runtime_request_duration_seconds_bucket{protocol="grpc",le="1.0"} 1',
            'neuron_runtime_request_duration_seconds_bucket{protocol="grpc",le="+Inf"} 2',
            'neuron_runtime_request_duration_seconds_sum{protocol="grpc"} 4.0',
            'neuron_runtime_request_duration_seconds_count{protocol="grpc"} 2',
            'neuron_runtime_requests_total{code="200",model="a"} 3',
            'neuron_runtime_requests_total{code="200",model="b"} 4',
            'neuron_runtime_grpc_requests_total{code="OK",model="a"} 2',
            'neuron_runtime_requests_in_flight{worker="0"} 1',
            'neuron_runtime_requests_in_flight{worker="1"} 2',
            "",
        ]
    )
    got = parse_metrics(text, at=0.0)
    assert got.buckets == ((0.1, 4.0), (1.0, 5.0), (INF, 7.0))
    assert (got.duration_sum, got.duration_count) == (6.5, 7)
    assert dict(got.requests) == {"200": 7, "grpc:OK": 2}
    assert got.in_flight == 3


def test_other_families_and_lines_are_not_read() -> None:
    """Lines of families the operator does not read are skipped unparsed: they can neither break nor slow it."""
    text = runtime_text(drive_mixed)
    noisy = 'garbage here\n\x00\x01\xff binary\nsome_other_metric{a="b" 1\n' + text + "# a comment\nzzz NaN\n"
    assert parse_metrics(noisy, at=1.0) == parse_metrics(text, at=1.0)


def test_many_label_sets_within_the_limits_give_a_sane_sum() -> None:
    lines = [f'neuron_runtime_requests_total{{code="{200 + i % 300}",shard="{i}"}} 1' for i in range(999)]
    other = [f'unrelated_series{{i="{i}"}} {i}' for i in range(15000)]  # many series of another family
    got = parse_metrics("\n".join(lines + other) + "\n", at=0.0)
    assert sum(got.requests.values()) == 999
    assert len(got.requests) == 300
    assert got.requests["200"] == 4  # shards 0, 300, 600, 900


HOSTILE: list[tuple[str, str, str]] = [
    ("empty", "", "none of the runtime's metric families"),
    ("garbage", "garbage here\nmore garbage\n", "none of the runtime's metric families"),
    ("binary", bytes(range(256)).decode("latin-1") * 64, "none of the runtime's metric families"),
    ("too long", "neuron_runtime_requests_in_flight 1\n" + "#" * (2 << 20), "longer than 1048576"),
    ("NaN counter", 'neuron_runtime_requests_total{code="200"} NaN\n', "must be a finite number >= 0"),
    ("negative counter", 'neuron_runtime_requests_total{code="500"} -3\n', "must be a finite number >= 0"),
    ("infinite counter", 'neuron_runtime_grpc_requests_total{code="OK"} +Inf\n', "must be a finite number >= 0"),
    ("NaN sum", "neuron_runtime_request_duration_seconds_sum NaN\n", "must be a finite number >= 0"),
    ("NaN gauge", "neuron_runtime_requests_in_flight NaN\n", "must be a finite number >= 0"),
    ("negative gauge", "neuron_runtime_queue_depth_rows -1\n", "must be a finite number >= 0"),
    ("not a number", "neuron_runtime_requests_in_flight lots\n", "line 1:"),
    ("hex", "neuron_runtime_requests_in_flight 0x10\n", "line 1:"),
    ("unclosed labels", 'neuron_runtime_requests_total{code="200" 1\n', "line 1:"),
    ("duplicate label", 'neuron_runtime_requests_total{code="200",code="500"} 1\n', "line 1:"),
    ("no value", "neuron_runtime_requests_in_flight\n", "line 1:"),
    ("bad TYPE", "# TYPE neuron_runtime_requests_in_flight\n", "line 1:"),
    ("no code", "neuron_runtime_requests_total 4\n", "has no code label"),
    ("not an HTTP code", 'neuron_runtime_requests_total{code="abc"} 4\n', "is not an HTTP status code"),
    ("not a gRPC code", 'neuron_runtime_grpc_requests_total{code="ok; drop"} 4\n', "is not a gRPC status code"),
    ("bad le", 'neuron_runtime_request_duration_seconds_bucket{le="soon"} 1\n', "is not a number"),
    ("NaN le", 'neuron_runtime_request_duration_seconds_bucket{le="NaN"} 1\n', "le is NaN"),
    ("no le", "neuron_runtime_request_duration_seconds_bucket 1\n", "has no le label"),
    (
        "no +Inf bucket",
        'neuron_runtime_request_duration_seconds_bucket{le="0.1"} 1\n',
        "the histogram has no +Inf bucket",
    ),
    (
        "decreasing buckets",
        'neuron_runtime_request_duration_seconds_bucket{le="0.1"} 5\n'
        'neuron_runtime_request_duration_seconds_bucket{le="+Inf"} 2\n',
        "bucket counts decrease",
    ),
    (
        "label sets with different buckets",
        'neuron_runtime_request_duration_seconds_bucket{p="a",le="0.1"} 1\n'
        'neuron_runtime_request_duration_seconds_bucket{p="a",le="+Inf"} 1\n'
        'neuron_runtime_request_duration_seconds_bucket{p="b",le="0.2"} 1\n'
        'neuron_runtime_request_duration_seconds_bucket{p="b",le="+Inf"} 1\n',
        "buckets differ",
    ),
    (
        "duplicate series",
        'neuron_runtime_requests_total{code="200"} 1\nneuron_runtime_requests_total{code="200"} 5\n',
        'neuron_runtime_requests_total{code="200"} appears twice',
    ),
    (
        "duplicate families",
        "# TYPE neuron_runtime_requests_in_flight gauge\nneuron_runtime_requests_in_flight 1\n" * 2,
        "neuron_runtime_requests_in_flight appears twice",
    ),
    (
        "very long line",
        'neuron_runtime_requests_total{code="200",x="' + "a" * 5000 + '"} 1\n',
        "line 1: longer than 1024 characters",
    ),
    (
        "too many label sets",
        "".join(f'neuron_runtime_requests_total{{code="200",x="{i}"}} 1\n' for i in range(1001)),
        "more than 1000 label sets",
    ),
    (
        "too much of the families read",
        "".join(f'neuron_runtime_requests_total{{code="200",x="{i}{"a" * 900}"}} 1\n' for i in range(300)),
        "take more than 262144 characters",
    ),
]


@pytest.mark.parametrize(("text", "reason"), [(t, r) for _, t, r in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_text_is_a_metrics_error(text: str, reason: str) -> None:
    with pytest.raises(MetricsError) as caught:
        parse_metrics(text, at=0.0)
    message = str(caught.value)
    assert reason in message
    assert len(message) <= 200
    assert "\n" not in message


def test_a_parse_error_names_its_line() -> None:
    text = render(Metrics()).splitlines()
    where = len(text) + 1
    bad = "\n".join([*text, 'neuron_runtime_requests_total{code="200"} twelve', "neuron_runtime_queue_depth_rows 0"])
    with pytest.raises(MetricsError, match=rf"^line {where}: .*twelve"):
        parse_metrics(bad + "\n", at=0.0)


def test_metrics_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="none of the runtime's metric families"):
        parse_metrics("nothing", at=0.0)


def test_a_text_at_the_size_limit_is_read() -> None:
    text = runtime_text(drive_mixed)
    padded = text + "#" * (MAX_METRICS_BYTES - len(text))
    assert len(padded) == MAX_METRICS_BYTES
    assert parse_metrics(padded, at=0.0) == parse_metrics(text, at=0.0)


# ================================================================================================== window


def test_a_window_since_start_counts_from_zero_and_classifies_errors() -> None:
    got = window(None, parse_metrics(runtime_text(drive_mixed), at=30.0))
    assert got.seconds == 0
    assert got.requests == 13 + 8
    # HTTP 400, 404 (x2), 500, 503; gRPC INVALID_ARGUMENT, UNAVAILABLE. Not 200, 429, OK, RESOURCE_EXHAUSTED.
    assert got.errors == 1 + 2 + 1 + 1 + 1 + 1
    assert got.duration_sum == pytest.approx(sum(OBSERVED))
    assert got.buckets == cumulative(OBSERVED)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("200", False),
        ("201", False),
        ("304", False),
        ("400", True),
        ("404", True),
        ("429", False),
        ("500", True),
        ("503", True),
        ("504", True),
        ("grpc:OK", False),
        ("grpc:RESOURCE_EXHAUSTED", False),
        ("grpc:INVALID_ARGUMENT", True),
        ("grpc:INTERNAL", True),
        ("grpc:UNAVAILABLE", True),
        ("grpc:CANCELLED", True),
        ("grpc:DEADLINE_EXCEEDED", True),
    ],
)
def test_which_codes_are_errors(code: str, error: bool) -> None:
    got = window(sample(0.0, {code: 1.0}), sample(5.0, {code: 4.0}))
    assert (got.requests, got.errors) == (3, 3 if error else 0)


def test_a_window_between_two_readings_is_the_difference() -> None:
    metrics = Metrics()
    metrics.requests.labels("200").inc(10)
    metrics.requests.labels("500").inc(1)
    for seconds in (0.004, 0.3):
        metrics.request_latency.observe(seconds)
    before = parse_metrics(render(metrics), at=100.0)
    metrics.requests.labels("200").inc(6)
    metrics.requests.labels("404").inc(2)
    metrics.grpc_requests.labels("INTERNAL").inc()
    later = [0.0015, 0.004, 0.7, 12.0]
    for seconds in later:
        metrics.request_latency.observe(seconds)
    after = parse_metrics(render(metrics), at=115.0)
    got = window(before, after)
    assert got.seconds == 15
    assert got.requests == 6 + 2 + 1
    assert got.errors == 2 + 1
    assert got.duration_sum == pytest.approx(sum(later))
    assert got.buckets == cumulative(later)  # (whole counts: exact)


def test_a_restarted_runtime_counts_from_zero() -> None:
    """Prometheus' rule: a counter lower than before means the whole sample restarted."""
    old = Metrics()
    old.requests.labels("200").inc(50)
    old.requests.labels("500").inc(5)
    for _ in range(55):
        old.request_latency.observe(0.01)
    before = parse_metrics(render(old), at=10.0)
    new = Metrics()  # the container restarted
    new.requests.labels("200").inc(60)  # more than before: only the other counters show the restart
    new.requests.labels("503").inc(2)
    for _ in range(62):
        new.request_latency.observe(0.5)
    after = parse_metrics(render(new), at=40.0)
    got = window(before, after)
    assert got == Window(seconds=30.0, requests=62, errors=2, duration_sum=after.duration_sum, buckets=after.buckets)


GROWN = ((0.1, 5.0), (INF, 14.0))


@pytest.mark.parametrize(
    "after",
    [
        sample(20.0, {"200": 14.0}, 5.0, 14, GROWN),  # the 500 series is gone
        sample(20.0, {"200": 13.0, "500": 1.0}, 5.0, 14, GROWN),  # one code went down, the others grew
        sample(20.0, {"200": 11.0, "500": 3.0}, 3.0, 14, GROWN),  # the sum went down
        sample(20.0, {"200": 11.0, "500": 3.0}, 5.0, 9, GROWN),  # the count went down
        sample(20.0, {"200": 11.0, "500": 3.0}, 5.0, 14, ((0.1, 1.0), (INF, 14.0))),  # a bucket went down
        sample(20.0, {"200": 11.0, "500": 3.0}, 5.0, 14, ((0.2, 5.0), (INF, 14.0))),  # another bucket layout
    ],
    ids=["series gone", "code down", "sum down", "count down", "bucket down", "new layout"],
)
def test_any_lower_counter_or_a_new_bucket_layout_is_a_restart(after: PodSample) -> None:
    before = sample(10.0, {"200": 8.0, "500": 2.0}, 4.0, 10, ((0.1, 3.0), (INF, 10.0)))
    expected = Window(
        seconds=10.0,
        requests=sum(after.requests.values()),
        errors=after.requests.get("500", 0.0),
        duration_sum=after.duration_sum,
        buckets=after.buckets,
    )
    assert window(before, after) == expected


def test_no_restart_gives_differences() -> None:
    before = sample(10.0, {"200": 8.0, "500": 2.0}, 4.0, 10, ((0.1, 3.0), (INF, 10.0)))
    after = sample(20.0, {"200": 10.0, "500": 3.0, "404": 1.0}, 5.0, 14, ((0.1, 5.0), (INF, 14.0)))
    assert window(before, after) == Window(10.0, 4.0, 2.0, 1.0, ((0.1, 2.0), (INF, 4.0)))


def test_a_histogram_appearing_is_not_a_restart() -> None:
    before = sample(10.0, {"200": 8.0})
    after = sample(20.0, {"200": 10.0}, 1.0, 2, ((0.1, 1.0), (INF, 2.0)))
    assert window(before, after) == Window(10.0, 2.0, 0.0, 1.0, ((0.1, 1.0), (INF, 2.0)))


def test_a_window_backwards_in_time_is_refused() -> None:
    with pytest.raises(ValueError, match=r"after \(at=5.0\) was read before before \(at=9.0\)"):
        window(sample(9.0), sample(5.0))


# =================================================================================================== merge


def test_merge_of_nothing_is_the_empty_window() -> None:
    assert merge([]) is EMPTY_WINDOW
    assert Window(0.0, 0.0, 0.0, 0.0, ()) == EMPTY_WINDOW


def test_merge_sums_and_keeps_the_longest_interval() -> None:
    a = Window(10.0, 5.0, 1.0, 2.0, ((0.1, 2.0), (1.0, 4.0), (INF, 5.0)))
    b = Window(12.0, 3.0, 2.0, 1.5, ((0.1, 1.0), (1.0, 1.0), (INF, 3.0)))
    idle = Window(11.0, 0.0, 0.0, 0.0, ())
    assert merge(iter([a, b, idle])) == Window(12.0, 8.0, 3.0, 3.5, ((0.1, 3.0), (1.0, 5.0), (INF, 8.0)))


def test_merge_of_different_bucket_layouts_stays_cumulative() -> None:
    """During a rollout between runtime versions pods may have different bounds: each counts, at a bound, what it
    has at its largest bound below it."""
    a = Window(10.0, 5.0, 0.0, 2.0, ((0.1, 2.0), (1.0, 4.0), (INF, 5.0)))
    b = Window(10.0, 6.0, 0.0, 3.0, ((0.5, 3.0), (INF, 6.0)))
    got = merge([a, b])
    assert got.buckets == ((0.1, 2.0), (0.5, 5.0), (1.0, 7.0), (INF, 11.0))
    counts = [c for _, c in got.buckets]
    assert counts == sorted(counts)


# ================================================================================================ quantile

HAND = ((0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.25, 0.1),  # rank 10: the whole first bucket, interpolated from 0
        (0.1, 0.04),  # rank 4 of 10 in [0, 0.1]
        (0.5, 0.3),  # rank 20: 10 into the 20 of (0.1, 0.5] -> 0.1 + 0.4 * 10/20
        (0.9, 0.8),  # rank 36: 6 into the 10 of (0.5, 1.0] -> 0.5 + 0.5 * 6/10
        (1.0, 1.0),
        (0.0, 0.0),
    ],
)
def test_quantile_by_hand(q: float, expected: float) -> None:
    assert quantile(q, HAND) == pytest.approx(expected)


def test_quantile_of_uniform_observations_is_exact() -> None:
    """Linear interpolation inside a bucket is exact when observations are spread evenly over it."""
    observations = [(i + 0.5) / 1000 for i in range(1000)]  # uniform on [0, 1]
    buckets = cumulative(observations, (0.25, 0.5, 0.75, 1.0, INF))
    for q in (0.05, 0.2, 0.33, 0.5, 0.61, 0.75, 0.9, 0.99):
        assert quantile(q, buckets) == pytest.approx(q, abs=1e-9)


def test_quantile_of_the_runtime_histogram() -> None:
    def drive(m: Metrics) -> None:
        for seconds in [0.003] * 4 + [0.007] * 4:
            m.request_latency.observe(seconds)

    buckets = parse_metrics(runtime_text(drive), at=0.0).buckets
    assert quantile(0.5, buckets) == pytest.approx(0.005)  # rank 4 ends the (0.002, 0.005] bucket
    assert quantile(0.75, buckets) == pytest.approx(0.0075)  # rank 6: 2 of 4 into (0.005, 0.01]
    assert quantile(0.25, buckets) == pytest.approx(0.0035)  # rank 2: 2 of 4 into (0.002, 0.005]


def test_a_rank_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert quantile(0.5, ((0.1, 1.0), (1.0, 2.0), (INF, 10.0))) == 1.0

    def slow(m: Metrics) -> None:
        for _ in range(3):
            m.request_latency.observe(60.0)

    everything_slow = parse_metrics(runtime_text(slow), at=0.0)
    assert everything_slow.buckets[-1] == (INF, 3.0)
    for q in (0.01, 0.5, 0.99, 1.0):
        assert quantile(q, everything_slow.buckets) == 30.0


def test_quantile_without_observations_is_none() -> None:
    assert quantile(0.5, ()) is None
    assert quantile(0.5, tuple((le, 0.0) for le in LES)) is None
    assert quantile(0.99, ((INF, 5.0),)) is None  # no finite bound to answer with (Prometheus: NaN)


def test_quantile_follows_prometheus_on_untidy_buckets() -> None:
    # unsorted, a bound given twice (added up), a count lower than the one below it (raised to it)
    untidy = ((1.0, 40.0), (INF, 40.0), (0.1, 6.0), (0.1, 4.0), (0.5, 30.0))
    assert quantile(0.5, untidy) == pytest.approx(0.3)
    # (0.5, 5) is raised to 10: rank 12 is 2 of 10 into (0.5, 1.0] (not 7 of 15)
    assert quantile(0.6, ((0.1, 10.0), (0.5, 5.0), (1.0, 20.0), (INF, 20.0))) == pytest.approx(0.6)
    assert quantile(0.3, ((-1.0, 5.0), (1.0, 10.0), (INF, 10.0))) == -1.0  # a first bound <= 0 is returned as is


@pytest.mark.parametrize("q", [-0.1, 1.5, math.nan])
def test_quantile_outside_zero_one_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="q must be in"):
        quantile(q, HAND)


def test_quantile_without_inf_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match=r"highest bucket must be \+Inf, got 1.0"):
        quantile(0.5, ((0.1, 1.0), (1.0, 2.0)))


# ============================================================================================= concurrency


def test_concurrency_by_littles_law_on_a_scripted_sequence() -> None:
    """Requests of known duration answered between readings: sum of durations / interval."""
    metrics = Metrics()
    readings = [parse_metrics(render(metrics), at=0.0)]
    script = [
        (10.0, [0.5] * 40),  # 20 request-seconds in 10 s: 2 in the pod on average
        (20.0, [0.25] * 20),  # 5 in 10 s: 0.5
        (25.0, []),  # idle: 0
        (45.0, [2.0] * 80),  # 160 in 20 s: 8
    ]
    for at, durations in script:
        for seconds in durations:
            metrics.request_latency.observe(seconds)
        readings.append(parse_metrics(render(metrics), at=at))
    got = [concurrency(a, b) for a, b in itertools.pairwise(readings)]
    assert got == pytest.approx([2.0, 0.5, 0.0, 8.0])


def test_concurrency_falls_back_to_the_gauge() -> None:
    metrics = Metrics()
    metrics.request_latency.observe(5.0)
    before = parse_metrics(render(metrics), at=10.0)
    metrics.in_flight.set(4)
    metrics.request_latency.observe(1.0)
    after = parse_metrics(render(metrics), at=10.0)
    assert concurrency(None, after) == 4  # no earlier reading
    assert concurrency(before, after) == 4  # no time passed
    assert concurrency(after, before) == 0.0  # swapped readings: the later one's gauge, never a negative rate
    restarted = Metrics()
    restarted.in_flight.set(3)
    restarted.request_latency.observe(0.1)
    assert concurrency(after, parse_metrics(render(restarted), at=20.0)) == 3  # reset: the sum went down


def test_concurrency_is_never_negative() -> None:
    assert concurrency(None, sample(1.0, in_flight=-2.0)) == 0.0
    assert concurrency(sample(0.0, duration_sum=5.0), sample(1.0, duration_sum=5.0)) == 0.0
