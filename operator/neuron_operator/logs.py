"""The operator's logging: one root handler, text or JSON lines, structured fields, quiet libraries.

``configure(level, fmt)`` is called once by ``neuron-operator run`` (``cli.main``; the Helm chart sets
``NEURON_OPERATOR_LOG_LEVEL`` / ``NEURON_OPERATOR_LOG_FORMAT``). ``text`` is for people
(``time LEVEL logger: message key=value ...``); ``json`` is one object per line for log pipelines:
``{"time", "level", "logger", "message", ...fields}``. Structured fields travel in a record's ``extra``:
either ``extra=fields(kind=..., name=...)`` (any key, even ones ``LogRecord`` reserves such as ``name``) or
plain ``extra={"reason": ...}`` keys.

Libraries that log every request or every handler call at INFO (httpx, kopf's per-object "Handler ...
succeeded", aiohttp's access log of the liveness probe) are held at WARNING unless the level is DEBUG;
at 1,000 objects they would otherwise write dozens of lines a second and bury the operator's own lines.

``decision(...)`` writes the one INFO line per reconcile pass that says what the reconciler decided.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]

#: Loggers that are chatty at INFO: kept at WARNING unless the operator runs at DEBUG.
#: httpx: one line per API request; httpcore: connection-level detail; kopf.objects: "Handler '...'
#: succeeded" for every watch event (and "... is processed"); kopf.activities: "Activity ... succeeded"
#: of kopf's start-up/probe activities; aiohttp.access: every liveness probe of kopf's health endpoint.
#: lightkube >= 1.0 talks HTTP through httpx2/httpcore2 (a fork with its own logger names).
QUIET_LOGGERS: Final = (
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "kopf.objects",
    "kopf.activities",
    "aiohttp.access",
)

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
#: The ``extra`` key under which ``fields()`` nests its mapping (so keys like ``name`` are allowed).
FIELDS_ATTR: Final = "fields"

#: Record attributes that are plumbing, not fields (kopf's object loggers mark records for its Events).
_HIDDEN: Final = frozenset({FIELDS_ATTR, "k8s_skip"})

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` argument carrying structured fields: ``log.info("...", extra=fields(name="bert"))``."""
    return {FIELDS_ATTR: values}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: plain ``extra`` keys, then those nested by ``fields()``."""
    out = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS and k not in _HIDDEN}
    nested = record.__dict__.get(FIELDS_ATTR)
    if isinstance(nested, dict):
        out.update(nested)
    return out


def _text_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        if value and not any(c.isspace() or c in '"=\\' for c in value):
            return value
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (values with spaces or quotes are JSON-quoted)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = record_fields(record)
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        return f"{head} {pairs}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, ms), level, logger, message, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            out[key if key not in out else f"field_{key}"] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _OperatorHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler ``configure`` installs (recognised, so configuring twice replaces it)."""


def configure(level: LogLevel | str = "INFO", fmt: LogFormat | str = "text", stream: Any = None) -> logging.Handler:
    """Install the root handler (replacing one from an earlier call) and set the levels. Idempotent."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format: expected 'text' or 'json', got {fmt!r}")
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level: expected DEBUG, INFO, WARNING or ERROR, got {level!r}")
    handler = _OperatorHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _OperatorHandler)]
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    return handler


def decision(
    logger: logging.Logger | logging.LoggerAdapter[Any],
    *,
    kind: str,
    namespace: str,
    name: str,
    pass_no: int | None = None,
    decision: str,
    changed: bool,
    reason: str,
    **extra: Any,
) -> None:
    """One INFO line for one reconcile decision.

    ``pass_no`` defaults to the work queue's number of the running pass (``workqueue.current_pass()``).
    Text: ``... <logger>: decision kind=NeuronDeployment namespace=ml name=bert object=ml/bert pass=3
    decision=Scale changed=true reason=Scaling replicas=2``; JSON: the same keys as fields.
    """
    if pass_no is None:
        from neuron_operator.workqueue import current_pass

        pass_no = current_pass()
    values: dict[str, Any] = {
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "object": f"{namespace}/{name}",
        "pass": pass_no,
        "decision": decision,
        "changed": changed,
        "reason": reason,
        **extra,
    }
    logger.info("decision", extra=fields(**values))
