"""What can go wrong with one inference request, independent of the wire protocol.

Both front ends (OIP v2 REST in `server`, OIP v2 gRPC in `grpc_server`) map these the same way:

=====================  ====  ======================  ===================================================
error                  HTTP  gRPC status             meaning
=====================  ====  ======================  ===================================================
`BadRequest`           400   INVALID_ARGUMENT        the request is malformed or does not fit the model
`RequestFailed`        400   INVALID_ARGUMENT        the model raised on this request's values, alone
                                                     (its batch-mates were re-run without it and served)
`RequestTimeout`       408   (n/a: gRPC deadlines)   the body did not arrive within `read_timeout_s`
`PayloadTooLarge`      413   (n/a: max message size) the body is over the limit (JSON: `max_json_bytes`)
`Overloaded`           429   RESOURCE_EXHAUSTED      the queue is full: retry later (`Retry-After`)
`Unavailable`          503   UNAVAILABLE             not ready, shutting down, or its worker died
`DeadlineExceeded`     504   DEADLINE_EXCEEDED       the request's deadline passed before its batch ran
`ModelError`           500   INTERNAL                the model failed in a way no single request explains
=====================  ====  ======================  ===================================================

Messages are short and never carry a traceback or the model's (TorchScript) code: `short_message` keeps only
the last line of what the graph raised.
"""

from __future__ import annotations

import re


class InferenceError(Exception):
    """Base: `http_status`, `grpc_code` (a `grpc.StatusCode` name) and whether the client should retry."""

    http_status = 500
    grpc_code = "INTERNAL"
    retry_after_s: int | None = None


class BadRequest(InferenceError, ValueError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class RequestFailed(InferenceError):
    """The graph raised on this request when it ran on its own (e.g. an embedding index out of range)."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class RequestTimeout(InferenceError):
    http_status = 408
    grpc_code = "DEADLINE_EXCEEDED"


class PayloadTooLarge(InferenceError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class Overloaded(InferenceError):
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    retry_after_s = 1


class Unavailable(InferenceError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
    retry_after_s = 1


class DeadlineExceeded(InferenceError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ModelError(InferenceError):
    http_status = 500
    grpc_code = "INTERNAL"


# TorchScript errors carry the serialized model code and a traceback ("Traceback of TorchScript, serialized
# code ...", "RuntimeError: The following operation failed in the TorchScript interpreter."): the client gets the
# last non-empty line, which is the underlying error ("IndexError: index out of range in self").
_NOISE = re.compile(r"^\s*(\^+|~+|File \"|Traceback|The following operation failed|# )")
MAX_MESSAGE = 300


def short_message(error: BaseException | str) -> str:
    """One line, at most `MAX_MESSAGE` characters, naming the error class and its core message; no code."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not _NOISE.match(line)]
    line = lines[-1] if lines else text.strip().splitlines()[0] if text.strip() else "unknown error"
    if not isinstance(error, str) and not line.startswith(type(error).__name__) and ":" not in line.split(" ")[0]:
        line = f"{type(error).__name__}: {line}"
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"
