"""Load of a serving pod, read from the runtime's Prometheus text (``GET /metrics``). Pure: no I/O.

The autoscaler and the canary gates read each serving pod's exposition through the apiserver's pod proxy
(``kube.pod_metrics``) and need a handful of numbers from it: responses by status code, the request-latency
histogram and the gauges of what is inside the pod now. ``parse_metrics`` turns one reading into a ``PodSample``;
``window`` turns two readings of the same pod into what happened between them (with Prometheus' counter-reset
rule); ``merge`` adds the windows of several pods; ``quantile`` is Prometheus' ``histogram_quantile`` and
``concurrency`` the average number of requests inside a pod over an interval (Little's law).

The families read (written by ``neuron_runtime.metrics``; their names are ``neuron_runtime.contract``'s, and
``tests/operator/test_loadmetrics.py`` drives the runtime's own ``Metrics`` to keep the reading in step):
``neuron_runtime_requests_total{code}`` (HTTP status), ``neuron_runtime_grpc_requests_total{code}`` (gRPC status
name), ``neuron_runtime_request_duration_seconds`` (one histogram for both protocols, no labels today;
any label sets are summed), ``neuron_runtime_requests_in_flight`` and ``neuron_runtime_queue_depth_rows``.

The text comes from a pod, i.e. from code the operator does not control: every failure is a ``MetricsError``
that says what and where, the text is bounded (``MAX_METRICS_BYTES``), lines of the families read are bounded,
and so is the number of label sets. Lines of other families are not parsed at all (a family this module does not
read can neither break nor slow the reading); a text with none of the families read is refused (it is not the
runtime's exposition: a zero reading would tell the autoscaler the pod is idle).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TextIO, cast

from prometheus_client.parser import text_fd_to_metric_families

from neuron_runtime import contract

#: Callers read at most this many bytes of a pod's ``/metrics``; ``parse_metrics`` refuses a longer text (counted in
#: characters: a text decoded from at most this many bytes never has more).
MAX_METRICS_BYTES: Final = 1 << 20
#: Longest line of a family read (the runtime's are under 200 characters): bounds the parser's work on one line.
_MAX_LINE_CHARS: Final = 1024
#: Most characters of the lines of the families read (the runtime's take about 4 KiB): bounds the parser's work,
#: about 0.2 s of CPU (measured) for the worst hostile text at this limit.
_MAX_READ_CHARS: Final = 1 << 18
#: Most label sets of one family read (the runtime exposes a few dozen status codes at most).
_MAX_LABEL_SETS: Final = 1000
#: Longest error message (the head is kept: it says what and where).
_MESSAGE_LIMIT: Final = 200

_REQUESTS: Final = contract.METRIC_REQUESTS
_GRPC_REQUESTS: Final = contract.METRIC_GRPC_REQUESTS
_DURATION: Final = contract.METRIC_REQUEST_DURATION
_IN_FLIGHT: Final = contract.METRIC_IN_FLIGHT
_QUEUED_ROWS: Final = contract.METRIC_QUEUED_ROWS
#: Prefix of the ``requests`` keys that count gRPC status codes (``"grpc:OK"``); HTTP codes have none (``"200"``).
_GRPC_PREFIX: Final = "grpc:"

_FAMILIES: Final = frozenset({_REQUESTS, _GRPC_REQUESTS, _DURATION, _IN_FLIGHT, _QUEUED_ROWS})
_BUCKET: Final = f"{_DURATION}_bucket"
_SUM: Final = f"{_DURATION}_sum"
_COUNT: Final = f"{_DURATION}_count"
_SAMPLES: Final = frozenset({_REQUESTS, _GRPC_REQUESTS, _IN_FLIGHT, _QUEUED_ROWS, _BUCKET, _SUM, _COUNT})
_NAME_END: Final = re.compile(r"[{\s]")
_HTTP_CODE: Final = re.compile(r"[1-5][0-9][0-9]")
_GRPC_CODE: Final = re.compile(r"[A-Z][A-Z_]{0,63}")


class MetricsError(ValueError):
    """The text is not a Prometheus exposition we can read (message says what and where, clipped to ~200 chars)."""

    def __init__(self, message: str) -> None:
        message = " ".join(message.split())
        super().__init__(message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 1] + "…")


_Buckets = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PodSample:
    """One reading of one pod's ``/metrics``: cumulative counters since the runtime started, and gauges."""

    at: float  # caller's clock (seconds) when read
    #: HTTP status code -> count (``neuron_runtime_requests_total``), plus ``"grpc:<CODE>"`` -> count
    requests: Mapping[str, float]
    duration_sum: float  # neuron_runtime_request_duration_seconds_sum, summed over label sets
    duration_count: float
    #: (le, cumulative count) summed over label sets, sorted by le, +Inf (``math.inf``) last
    buckets: _Buckets
    in_flight: float  # neuron_runtime_requests_in_flight (0 when absent)
    queued_rows: float  # neuron_runtime_queue_depth_rows (0 when absent)


@dataclass(frozen=True)
class Window:
    """What happened in one pod (or several, merged) between two readings."""

    seconds: float
    requests: float  # responses in the window (HTTP + gRPC)
    #: of which errors: HTTP code >= 400 except 429; gRPC code not OK except RESOURCE_EXHAUSTED (429's twin)
    errors: float
    duration_sum: float
    buckets: _Buckets  # cumulative counts in the window, same le's


EMPTY_WINDOW: Final[Window] = Window(seconds=0.0, requests=0.0, errors=0.0, duration_sum=0.0, buckets=())


# ------------------------------------------------------------------------------------------------- parsing


def _kept_lines(text: str) -> tuple[list[str], list[int]]:
    """The lines of the families read (samples, and their ``# HELP``/``# TYPE``), with their 1-based numbers."""
    lines: list[str] = []
    numbers: list[int] = []
    size = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in ("HELP", "TYPE") or parts[2] not in _FAMILIES:
                continue
        else:
            end = _NAME_END.search(line)
            if (line[: end.start()] if end else line) not in _SAMPLES:
                continue
        if len(line) > _MAX_LINE_CHARS:
            raise MetricsError(f"line {number}: longer than {_MAX_LINE_CHARS} characters: {line[:80]}")
        size += len(line) + 1
        if size > _MAX_READ_CHARS:
            raise MetricsError(
                f"line {number}: the lines of the runtime's metric families take more than {_MAX_READ_CHARS} characters"
            )
        lines.append(line)
        numbers.append(number)
    return lines, numbers


def _value(name: str, labels: Mapping[str, str], value: float) -> float:
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise MetricsError(f"{_series(name, labels)} is {value}: must be a finite number >= 0")
    return value


def _series(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v[:40]}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


def _request_key(name: str, labels: Mapping[str, str]) -> str:
    code = labels.get("code")
    if code is None:
        raise MetricsError(f"{_series(name, labels)} has no code label")
    if name == _REQUESTS:
        if not _HTTP_CODE.fullmatch(code):
            raise MetricsError(f"{_series(name, labels)}: code {code[:40]!r} is not an HTTP status code")
        return code
    if not _GRPC_CODE.fullmatch(code):
        raise MetricsError(f"{_series(name, labels)}: code {code[:40]!r} is not a gRPC status code name")
    return _GRPC_PREFIX + code


def _le(labels: Mapping[str, str]) -> float:
    raw = labels.get("le")
    if raw is None:
        raise MetricsError(f"{_series(_BUCKET, labels)} has no le label")
    try:
        le = float(raw)
    except ValueError:
        raise MetricsError(f"{_series(_BUCKET, labels)}: le {raw[:40]!r} is not a number") from None
    if math.isnan(le):
        raise MetricsError(f"{_series(_BUCKET, labels)}: le is NaN")
    return le


def _histogram(groups: Mapping[frozenset[tuple[str, str]], dict[float, float]]) -> _Buckets:
    """The buckets of every label set, checked (an +Inf bucket, cumulative counts) and summed by le."""
    if not groups:
        return ()
    expected: list[float] | None = None
    total: dict[float, float] = {}
    for key, buckets in groups.items():
        les = sorted(buckets)
        where = _series(_BUCKET, dict(key))
        if les[-1] != math.inf:
            raise MetricsError(f"{where}: the histogram has no +Inf bucket")
        if any(buckets[a] > buckets[b] for a, b in itertools.pairwise(les)):
            raise MetricsError(f"{where}: bucket counts decrease with le (they must be cumulative)")
        if expected is None:
            expected = les
        elif les != expected:
            raise MetricsError(f"{where}: its buckets differ from those of the histogram's other label sets")
        for le in les:
            total[le] = total.get(le, 0.0) + buckets[le]
    return tuple(sorted(total.items()))


@dataclass
class _Totals:
    """What ``parse_metrics`` has read so far: the sums of the families and the series seen (to refuse a repeat)."""

    requests: dict[str, float] = field(default_factory=dict)
    duration_sum: float = 0.0
    duration_count: float = 0.0
    in_flight: float = 0.0
    queued_rows: float = 0.0
    groups: dict[frozenset[tuple[str, str]], dict[float, float]] = field(default_factory=dict)
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = field(default_factory=set)
    per_family: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, labels: Mapping[str, str]) -> None:
        """Records one series of ``name``; refuses a series given twice and a family with too many label sets."""
        key = (name, frozenset(labels.items()))
        if key in self.seen:
            raise MetricsError(f"{_series(name, labels)} appears twice")
        self.seen.add(key)
        self.per_family[name] = self.per_family.get(name, 0) + 1
        if self.per_family[name] > _MAX_LABEL_SETS:
            raise MetricsError(f"{name} has more than {_MAX_LABEL_SETS} label sets")

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        """Adds one checked sample value of ``name`` to its family's sum (a bucket: to its label set's buckets)."""
        if name in (_REQUESTS, _GRPC_REQUESTS):
            code = _request_key(name, labels)
            self.requests[code] = self.requests.get(code, 0.0) + value
        elif name == _IN_FLIGHT:
            self.in_flight += value
        elif name == _QUEUED_ROWS:
            self.queued_rows += value
        elif name == _SUM:
            self.duration_sum += value
        elif name == _COUNT:
            self.duration_count += value
        else:
            le = _le(labels)
            rest = frozenset((k, v) for k, v in labels.items() if k != "le")
            self.groups.setdefault(rest, {})[le] = value

    def sample(self, at: float) -> PodSample:
        """The reading these totals make (the histogram checked and summed by le)."""
        return PodSample(
            at=at,
            requests=MappingProxyType(self.requests),
            duration_sum=self.duration_sum,
            duration_count=self.duration_count,
            buckets=_histogram(self.groups),
            in_flight=self.in_flight,
            queued_rows=self.queued_rows,
        )


def parse_metrics(text: str, at: float) -> PodSample:
    """The families read, from one ``/metrics`` text read at ``at`` (the caller's clock, seconds).

    Raises ``MetricsError`` for a text longer than ``MAX_METRICS_BYTES``, a malformed line of a family read, a NaN,
    infinite or negative value, a series given twice, a histogram without +Inf bucket or with decreasing counts,
    more than ``_MAX_LABEL_SETS`` label sets in a family, or a text holding none of the families read.
    """
    if len(text) > MAX_METRICS_BYTES:
        raise MetricsError(f"the metrics text is longer than {MAX_METRICS_BYTES} bytes ({len(text)} characters)")
    lines, numbers = _kept_lines(text)
    if not lines:
        raise MetricsError(
            f"none of the runtime's metric families ({_REQUESTS}, {_DURATION}, ...) is in the text "
            f"(not the runtime's {contract.METRICS_PATH}?); it starts with {text[:60]!r}"
        )
    totals = _Totals()
    read = 0  # lines the parser has taken (to say where a failure is)

    def feed() -> Iterator[str]:
        nonlocal read
        for line in lines:
            read += 1
            yield line + "\n"

    try:  # (the parser only iterates over its "file")
        for family in text_fd_to_metric_families(cast(TextIO, feed())):
            for sample in family.samples:
                name, labels = sample.name, dict(sample.labels)
                if name not in _SAMPLES:  # (a sample name the parser derived, e.g. a counter without _total)
                    continue
                totals.count(name, labels)
                totals.add(name, labels, _value(name, labels, float(sample.value)))
    except MetricsError:
        raise
    except Exception as exc:  # the parser raises ValueError, IndexError, ... on malformed lines: all are the text's
        index = min(max(read, 1), len(numbers)) - 1
        detail = str(exc) or type(exc).__name__
        raise MetricsError(f"line {numbers[index]}: {detail}: {lines[index][:100]}") from exc
    return totals.sample(at)


# ------------------------------------------------------------------------------------------------- windows


def _is_error(code: str) -> bool:
    """Whether a ``requests`` key counts as an error: HTTP >= 400 but 429; gRPC not OK but RESOURCE_EXHAUSTED
    (a refusal under load is back-pressure, not a failure of the model)."""
    if code.startswith(_GRPC_PREFIX):
        return code[len(_GRPC_PREFIX) :] not in ("OK", "RESOURCE_EXHAUSTED")
    return _HTTP_CODE.fullmatch(code) is not None and int(code) >= 400 and code != "429"


def _reset(before: PodSample, after: PodSample) -> bool:
    """Whether ``after`` is from a restarted runtime: a counter went down, or the histogram's buckets changed."""
    if any(after.requests.get(code, 0.0) < count for code, count in before.requests.items()):
        return True
    if after.duration_sum < before.duration_sum or after.duration_count < before.duration_count:
        return True
    if not before.buckets:
        return False
    if [le for le, _ in before.buckets] != [le for le, _ in after.buckets]:
        return True  # only a new process changes the layout
    return any(a < b for (_, a), (_, b) in zip(after.buckets, before.buckets, strict=True))


def window(before: PodSample | None, after: PodSample) -> Window:
    """What happened between two readings of one pod; ``before=None``: since the runtime started (seconds 0).

    A counter reset (any counter of ``after`` lower than in ``before``, or a changed bucket layout: the container
    restarted) follows Prometheus' rule: the whole sample restarted, so the window is ``after`` counted from 0.
    Raises ``ValueError`` when ``after`` was read before ``before``.
    """
    if before is not None and after.at < before.at:
        raise ValueError(f"window: after (at={after.at}) was read before before (at={before.at})")
    seconds = 0.0 if before is None else after.at - before.at
    base = None if before is None or _reset(before, after) else before
    requests = dict(after.requests)
    duration_sum = after.duration_sum
    buckets = after.buckets
    if base is not None:
        requests = {code: count - base.requests.get(code, 0.0) for code, count in after.requests.items()}
        duration_sum = after.duration_sum - base.duration_sum
        if base.buckets:
            buckets = tuple((le, a - b) for (le, a), (_, b) in zip(after.buckets, base.buckets, strict=True))
    return Window(
        seconds=seconds,
        requests=sum(requests.values()),
        errors=sum(count for code, count in requests.items() if _is_error(code)),
        duration_sum=duration_sum,
        buckets=buckets,
    )


def _at(buckets: _Buckets, le: float) -> float:
    """The cumulative count at ``le``: that of the largest bucket bound <= ``le`` (0 below the first)."""
    count = 0.0
    for bound, c in buckets:
        if bound > le:
            break
        count = c
    return count


def merge(windows: Iterable[Window]) -> Window:
    """The windows of several pods as one: counts summed, ``seconds`` the longest; ``EMPTY_WINDOW`` for none.

    Pods with different bucket layouts (a rollout between runtime versions) are merged on the union of the
    bounds, each pod counting at a bound what it has at its largest bound below or at it (a lower bound; exact at
    the shared bounds and at +Inf), so the result stays cumulative."""
    items = list(windows)
    if not items:
        return EMPTY_WINDOW
    layouts = [w.buckets for w in items if w.buckets]
    bounds = sorted({le for b in layouts for le, _ in b})
    return Window(
        seconds=max(w.seconds for w in items),
        requests=sum(w.requests for w in items),
        errors=sum(w.errors for w in items),
        duration_sum=sum(w.duration_sum for w in items),
        buckets=tuple((le, sum(_at(b, le) for b in layouts)) for le in bounds),
    )


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: the bucket holding rank ``q * count`` is found and the value is
    interpolated linearly inside it (from 0 in the first bucket); a rank in the +Inf bucket returns the highest
    finite bound. None when nothing was observed (or there is no finite bound): Prometheus' NaN.

    As Prometheus does, buckets are sorted, equal bounds are added up and counts are made non-decreasing. Unlike
    it, ``q`` outside [0, 1] and a histogram without an +Inf bucket are errors (``ValueError``), and ``q = 0``
    with an empty first bucket gives 0 (Prometheus: NaN)."""
    if not 0.0 <= q <= 1.0:  # (NaN too)
        raise ValueError(f"quantile: q must be in [0, 1], got {q}")
    if not buckets:
        return None
    coalesced: dict[float, float] = {}
    for le, count in buckets:
        coalesced[le] = coalesced.get(le, 0.0) + count
    les = sorted(coalesced)
    if les[-1] != math.inf:
        raise ValueError(f"quantile: the highest bucket must be +Inf, got {les[-1]}")
    counts: list[float] = []
    for le in les:
        counts.append(max(coalesced[le], counts[-1] if counts else 0.0))
    observations = counts[-1]
    if len(les) < 2 or observations <= 0:
        return None
    rank = q * observations
    b = next((i for i in range(len(les) - 1) if counts[i] >= rank), len(les) - 1)
    if b == len(les) - 1:
        return les[-2]
    if b == 0 and les[0] <= 0:
        return les[0]
    start, end, count = 0.0, les[b], counts[b]
    if b > 0:
        start = les[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:  # only rank 0 in an empty first bucket
        return start
    return start + (end - start) * (rank / count)


def concurrency(before: PodSample | None, after: PodSample) -> float:
    """The average number of requests inside the pod between two readings, by Little's law: time spent by the
    requests answered in the interval / length of the interval. ``after.in_flight`` (the gauge now) when there is
    no earlier reading, the interval is not positive, or the runtime restarted in between. Never negative.

    (Latency is observed when a request ends, so a request still running at ``after`` counts in a later interval.)
    """
    if before is None or after.at <= before.at or _reset(before, after):
        return max(0.0, after.in_flight)
    return max(0.0, (after.duration_sum - before.duration_sum) / (after.at - before.at))
