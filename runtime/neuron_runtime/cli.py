"""`neuron-runtime` command line: `compile` (run by the operator's compile Job) and `serve` (the serving pod).

Heavy modules (torch, aiohttp) are imported inside the commands, so `neuron-runtime --help` stays fast and a
compile-cache hit never loads torch.

`compile` exit codes (also in the termination message's `reason`; defined in `neuron_runtime.contract`, where
`CompileFailure.permanent` says which the compile Job does not retry: 2, 3, 5, 8, 9):
  0  succeeded (or cache hit)
  2  BadRequest        the compile request is not valid JSON / fails validation
  3  SourceFailed      the model source cannot be fetched, verified (sha256) or loaded
  4  TraceFailed       tracing, or checking the traced graph against eager output, failed
  5  NeuronMissing     the target needs torch-neuronx / torch-neuron, which this image lacks
  8  UnsupportedArchitecture  the model cannot target this architecture (inf1: serialized model > 2 GB)
  9  StorageAccessDenied  S3 refused the credentials or the operation (source read, artifact write)
  9  StorageNotFound      the artifact bucket does not exist
 10  StorageUnavailable   the S3 endpoint did not answer (the only storage failure the Job retries)
  1  InternalError     anything else

`--output-root` is a directory (a mounted volume) or `s3://bucket/prefix`: the artifact is found, or compiled
locally and published, under `<root>/<cache key>/`.

`gc` (run by the operator's artifact GC Job; `neuron_runtime.retention`) removes, with `--delete`, the artifacts under
`--root` that no kept cache key names and that were last referenced at least `--min-age-seconds` ago (without it:
a dry run that only reports them). Kept keys: `--keep-file` or env NEURON_RUNTIME_GC_KEEP (a JSON list; a long
list continues in NEURON_RUNTIME_GC_KEEP_1, _2, ...). Exit codes:
  0  succeeded (the termination message lists what expired and what was freed)
  2  BadRequest          the keep list or an argument is invalid
  9  StorageAccessDenied / StorageNotFound   S3 refused the credentials or the operation, or no such bucket
 10  StorageUnavailable  the S3 endpoint did not answer
  1  InternalError       anything else (a volume error included)

`serve` exits 0 after a SIGTERM drain; otherwise it writes a termination message too:
  2  InvalidSettings / InvalidPlacement   the settings, or the placement on the visible cores, are invalid
  3  ArtifactInvalid      the artifact does not verify (digest, manifest, format version)
  6  ParityFailed         a graph's outputs on this device differ from the eager reference beyond the tolerance
  7  IncompatibleRuntime  this image's torch / Neuron SDK cannot serve the artifact (see `neuron_runtime.compat`)
  8  WorkerCrashLoop      worker processes died more often than `worker_restarts` allows
  3  StorageNotFound      (artifact_uri set) the artifact's objects are not in the bucket
  9  StorageAccessDenied  (artifact_uri set) S3 refused the credentials
 10  StorageUnavailable   (artifact_uri set) the S3 endpoint did not answer
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from neuron_runtime.contract import (
    COMPILE_REQUEST_ENV,
    DEFAULT_TERMINATION_LOG,
    EXIT_OK,
    GC_KEEP_ENV,
    TERMINATION_LOG_ENV,
    CompileFailure,
    CompileResult,
    Failure,
    GcResult,
    TerminationMessage,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuron-runtime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    comp = sub.add_parser("compile", help="compile a model into a cached, verified artifact")
    src = comp.add_mutually_exclusive_group()
    src.add_argument("--request-json", help="CompileRequest as JSON")
    src.add_argument("--request", type=Path, help="file holding the CompileRequest JSON")
    comp.add_argument(
        "--output-root", required=True, help="a directory or s3://bucket/prefix; writes ROOT/<cache key>/"
    )
    comp.add_argument(
        "--termination-log",
        help=f"termination message path (env {TERMINATION_LOG_ENV}; default {DEFAULT_TERMINATION_LOG} if it exists)",
    )
    comp.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    gc = sub.add_parser("gc", help="remove (or, by default, report) artifacts no longer referenced")
    gc.add_argument("--root", required=True, help="the artifact root: a directory or s3://bucket/prefix")
    gc.add_argument(
        "--min-age-seconds", type=float, required=True, help="an unreferenced artifact expires once this old"
    )
    gc.add_argument("--delete", action="store_true", help="delete what expired (default: a dry run)")
    gc.add_argument("--keep-file", type=Path, help=f"JSON list of referenced cache keys (default: env {GC_KEEP_ENV})")
    gc.add_argument("--now", help=argparse.SUPPRESS)  # tests only: the current time, ISO 8601
    gc.add_argument("--termination-log", help=f"termination message path (as for compile; env {TERMINATION_LOG_ENV})")
    gc.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    serve = sub.add_parser("serve", help="serve an artifact over the Open Inference Protocol v2")
    serve.add_argument("--config", type=Path, help="YAML/JSON file of ServeSettings (env vars take precedence)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "compile":
        return run_compile(args)
    if args.command == "gc":
        return run_gc(args)
    return run_serve(args)


def storage_failure(exc: Exception) -> CompileFailure:
    """The failure of an `objectstore.StorageError`, the same for compile and gc (serve maps its own)."""
    from neuron_runtime import objectstore

    if isinstance(exc, objectstore.AccessDenied):
        return CompileFailure.STORAGE_ACCESS_DENIED
    if isinstance(exc, objectstore.ObjectNotFound):
        return CompileFailure.STORAGE_NOT_FOUND
    return CompileFailure.STORAGE_UNAVAILABLE


def termination_log_path(explicit: str | None) -> Path | None:
    """`--termination-log`, else env `NEURON_RUNTIME_TERMINATION_LOG`, else kubelet's default path if it exists."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(TERMINATION_LOG_ENV):
        return Path(env)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def write_termination_message(path: Path | None, message: TerminationMessage) -> str:
    """Write the one-line JSON result (< 4096 bytes: `TerminationMessage.line`) where kubelet reads it; print it."""
    line = message.line()
    if path is not None:
        try:
            path.write_text(line + "\n")
        except OSError as exc:
            print(f"cannot write termination message to {path}: {exc}", file=sys.stderr)
    print(line)
    return line


class _Command:
    """What compile and gc share: where the termination message goes, failing with a reason, progress lines."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.quiet = name, bool(args.quiet)
        self.log_path = termination_log_path(args.termination_log)

    def fail(self, failure: CompileFailure, message: str) -> int:
        write_termination_message(self.log_path, Failure(reason=failure.value, message=message))
        return failure.exit_code

    def progress(self, message: str) -> None:
        if not self.quiet:
            print(f"[neuron-runtime {self.name}] {message}", file=sys.stderr, flush=True)


class _BadRequest(ValueError):
    """The command's input is missing or invalid (exit BadRequest)."""


def _compile_request_json(args: argparse.Namespace) -> str:
    """The CompileRequest JSON from --request-json, --request or the operator's env var."""
    if args.request_json is not None:
        return str(args.request_json)
    if args.request is not None:
        return str(args.request.read_text())
    if COMPILE_REQUEST_ENV in os.environ:
        return os.environ[COMPILE_REQUEST_ENV]
    raise _BadRequest(f"give --request-json, --request or {COMPILE_REQUEST_ENV}")


def _compile_failure(exc: Exception) -> tuple[CompileFailure, str]:
    """The failure and message of an exception raised by `compile_artifact`."""
    from neuron_runtime import objectstore
    from neuron_runtime.compile import TraceError
    from neuron_runtime.neuron import NeuronPackageMissing, UnsupportedArchitecture
    from neuron_runtime.sources import SourceError

    known: tuple[tuple[type[Exception], CompileFailure], ...] = (
        (NeuronPackageMissing, CompileFailure.NEURON_MISSING),
        (UnsupportedArchitecture, CompileFailure.UNSUPPORTED_ARCHITECTURE),
        (SourceError, CompileFailure.SOURCE_FAILED),
        (TraceError, CompileFailure.TRACE_FAILED),
    )
    for type_, failure in known:
        if isinstance(exc, type_):
            return failure, str(exc)
    if isinstance(exc, objectstore.StorageError):
        return storage_failure(exc), str(exc)
    return CompileFailure.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"


def run_compile(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from neuron_runtime import objectstore
    from neuron_runtime.compile import compile_artifact
    from neuron_runtime.config import CompileRequest

    cmd = _Command("compile", args)
    try:
        request = CompileRequest.model_validate_json(_compile_request_json(args))
    except _BadRequest as exc:
        return cmd.fail(CompileFailure.BAD_REQUEST, str(exc))
    except (OSError, ValidationError) as exc:
        return cmd.fail(CompileFailure.BAD_REQUEST, f"invalid compile request: {exc}")
    root: str | Path = args.output_root if objectstore.is_s3(args.output_root) else Path(args.output_root)
    try:
        result = compile_artifact(request, root, cmd.progress)
    except Exception as exc:
        return cmd.fail(*_compile_failure(exc))
    manifest = result.manifest
    try:
        total_bytes: int | None = _stored_bytes(result)
    except Exception as exc:  # a size for the serving pods' download volume; never a reason to fail the compile
        cmd.progress(f"cannot measure the artifact's size: {exc}")
        total_bytes = None
    done = CompileResult(
        cache_key=manifest.cache_key,
        uri=str(result.location),
        sha256=result.digest,
        size_bytes=manifest.size_bytes,
        total_bytes=total_bytes,
        compile_seconds=manifest.compile_seconds,
        neuron_core_version=manifest.neuron_core_version,
        compiler_version=manifest.compiler_version,
        torch_version=manifest.torch_version,
        cached=result.cached,
        max_abs_error=manifest.max_abs_error,
    )
    write_termination_message(cmd.log_path, done)
    return EXIT_OK


def _gc_keep(args: argparse.Namespace) -> frozenset[str]:
    """The referenced cache keys: --keep-file, or NEURON_RUNTIME_GC_KEEP and NEURON_RUNTIME_GC_KEEP_1, _2, ... (the
    operator splits a long list: one environment string may not exceed 128 KiB)."""
    from neuron_runtime import retention

    if args.keep_file is not None:
        return retention.parse_keep(args.keep_file.read_text())
    chunks = [v for k, v in sorted(os.environ.items()) if k == GC_KEEP_ENV or k.startswith(f"{GC_KEEP_ENV}_")]
    return frozenset().union(*(retention.parse_keep(chunk) for chunk in chunks or ["[]"]))


def run_gc(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from neuron_runtime import objectstore, retention

    cmd = _Command("gc", args)
    try:
        keep = _gc_keep(args)
        now = retention.parse_time(args.now) if args.now else datetime.now(timezone.utc)
        if args.min_age_seconds < 0:
            raise retention.GcRequestError("--min-age-seconds must not be negative")
        root_s3 = objectstore.S3Location.parse(args.root) if objectstore.is_s3(args.root) else None
    except (OSError, ValueError) as exc:
        return cmd.fail(CompileFailure.BAD_REQUEST, f"invalid gc request: {exc}")
    mode = "deleting" if args.delete else "dry run (nothing is deleted)"
    cmd.progress(f"{args.root}: {len(keep)} referenced cache keys, minimum age {args.min_age_seconds:.0f}s, {mode}")
    try:
        if root_s3 is not None:
            s3 = objectstore.client_from_env()
            result = retention.collect_s3(s3, root_s3, keep, args.min_age_seconds, now, args.delete, cmd.progress)
        else:
            root = Path(args.root)
            result = retention.collect_volume(root, keep, args.min_age_seconds, now, args.delete, cmd.progress)
    except objectstore.StorageError as exc:
        return cmd.fail(storage_failure(exc), str(exc))
    except Exception as exc:
        return cmd.fail(CompileFailure.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    cmd.progress(
        f"{result.kept} kept, {result.retained} unreferenced but younger than the minimum age, "
        f"{len(result.expired)} expired ({result.reclaimable_bytes} bytes), {len(result.leftovers)} leftovers, "
        f"{result.deleted_bytes} bytes deleted"
    )
    write_termination_message(cmd.log_path, GcResult.model_validate(result.message()))
    return EXIT_OK


def _stored_bytes(result: Any) -> int:
    """Bytes of every file of the compiled artifact, the manifest included (graphs, reference data)."""
    from neuron_runtime import objectstore
    from neuron_runtime.config import MANIFEST_NAME

    if objectstore.is_s3(result.location):
        prefix = objectstore.S3Location.parse(result.location)
        return objectstore.stored_bytes(objectstore.client_from_env(), prefix, result.manifest)
    directory = Path(result.location)
    return sum((directory / name).stat().st_size for name in [*result.manifest.files, MANIFEST_NAME])


def run_serve(args: argparse.Namespace) -> int:
    from neuron_runtime.server import serve_main

    return serve_main(args.config)


if __name__ == "__main__":
    sys.exit(main())
