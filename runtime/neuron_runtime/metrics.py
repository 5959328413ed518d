"""Prometheus metrics of the serving runtime (`GET /metrics`).

One `Metrics` object per server, on its own `CollectorRegistry` (so tests can run several servers in one
process). Names follow Prometheus conventions; `neuron_runtime_` prefix; seconds and rows as base units.
Padding ratio = padded rows / executed rows: the compute a fixed-shape graph spends on rows nobody asked for.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from neuron_runtime import contract

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATIO_BUCKETS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            contract.METRIC_REQUEST_DURATION,
            "Inference request latency, from body received to response ready",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            contract.METRIC_REQUESTS, "Inference requests by HTTP status code", ["code"], registry=r
        )
        self.grpc_requests = Counter(
            contract.METRIC_GRPC_REQUESTS,
            "gRPC ModelInfer requests by gRPC status code name (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...)",
            ["code"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "neuron_runtime_queue_wait_seconds",
            "Time a request waited in the batch queue",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "neuron_runtime_batch_size_rows",
            "Rows per dispatched batch (before padding)",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "neuron_runtime_batch_padding_ratio",
            "Padded rows / executed rows per batch",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.rows_executed = Counter(
            "neuron_runtime_rows_executed_total", "Rows run through traced graphs, padding included", registry=r
        )
        self.rows_padded = Counter("neuron_runtime_rows_padded_total", "Padding rows run", registry=r)
        self.worker_busy = Counter(
            "neuron_runtime_worker_busy_seconds_total",
            "Time each worker spent executing graphs",
            ["worker"],
            registry=r,
        )
        self.queue_depth = Gauge(contract.METRIC_QUEUED_ROWS, "Rows waiting in the batch queue", registry=r)
        self.rejections = Counter(
            "neuron_runtime_rejections_total",
            "Requests refused: queue_full (429), timeout (504), shutting_down (503), bad_request (4xx)",
            ["reason"],
            registry=r,
        )
        self.neuroncore_executions = Counter(
            "neuron_runtime_neuroncore_executions_total",
            "Graph calls per NeuronCore (absolute core id; Neuron targets with pinned placement)",
            ["neuroncore"],
            registry=r,
        )
        self.neuroncore_busy = Counter(
            "neuron_runtime_neuroncore_busy_seconds_total",
            "Time each NeuronCore spent in graph calls (absolute core id; pinned placement)",
            ["neuroncore"],
            registry=r,
        )
        self.parity_max_abs_error = Gauge(
            "neuron_runtime_parity_max_abs_error",
            "Largest absolute error of any graph vs the eager reference, measured by the parity gate at start-up",
            registry=r,
        )
        self.worker_deaths = Counter(
            "neuron_runtime_worker_deaths_total",
            "Worker processes that died unexpectedly (OOM kill, crash); each is replaced on the same cores",
            ["worker"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "neuron_runtime_worker_restarts_total",
            "Replacement workers started, loaded and warmed after a worker died",
            ["worker"],
            registry=r,
        )
        self.isolations = Counter(
            "neuron_runtime_batch_isolations_total",
            "Batches that failed and were re-run in parts to find the request(s) that made the graph raise",
            registry=r,
        )
        self.in_flight = Gauge(contract.METRIC_IN_FLIGHT, "Inference requests being handled", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
