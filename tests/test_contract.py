"""The operator↔runtime contract (``neuron_runtime.contract``) is the only place its names, codes and formats live.

- No literal copy: every string constant in ``operator/`` and ``runtime/`` (docstrings aside) is scanned for the
  contract's values (env var names, paths, metric families, the parity prefix); a module-level ``EXIT_*`` constant
  outside the contract is refused too.
- The exit codes: one per reason, permanent and retryable compile failures never share a code, the compile Job's
  podFailurePolicy is built from them.
- The termination message: what the runtime writes, the operator parses back to the same typed object; a line never
  exceeds kubelet's 4096 bytes; a malformed or incomplete one parses to None.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from neuron_runtime import contract
from neuron_runtime.contract import CompileFailure, CompileResult, Failure, GcResult, ServeRefusal

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "runtime" / "neuron_runtime" / "contract.py"
SCANNED = [
    p
    for root in (REPO / "operator" / "neuron_operator", REPO / "runtime" / "neuron_runtime")
    for p in sorted(root.rglob("*.py"))
    if p != CONTRACT and "_proto" not in p.parts
]

#: The contract's literals: a string constant elsewhere that contains one is a copy.
LITERALS = {
    name: value
    for name, value in vars(contract).items()
    if name.isupper() and isinstance(value, str) and name not in {"ENV_NESTED_DELIMITER"}  # "__" is every dunder
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (module, class, function)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _copies(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            # One hit per constant, naming the most specific literal (the env names share ENV_PREFIX).
            for name, value in sorted(LITERALS.items(), key=lambda kv: -len(kv[1])):
                if value in node.value:
                    hits.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r} copies contract.{name}")
                    break
        if isinstance(node, ast.Assign) and path.parent.name in ("neuron_operator", "neuron_runtime", "resources"):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("EXIT_") and node.col_offset == 0:
                    hits.append(
                        f"{path.relative_to(root)}:{node.lineno}: {target.id} (exit codes live in the contract)"
                    )
    return hits


def test_the_scan_covers_both_packages_and_finds_a_planted_copy(tmp_path: Path) -> None:
    """The scan is not vacuous: it reads both packages, and a copy of a contract name is found."""
    assert len(SCANNED) > 40
    assert {"neuron_operator", "neuron_runtime"} <= {p.relative_to(REPO).parts[1] for p in SCANNED}
    assert {"COMPILE_REQUEST_ENV", "GC_KEEP_ENV", "READY_PATH", "METRIC_REQUESTS", "PARITY_LOG_PREFIX"} <= set(LITERALS)
    planted = tmp_path / "neuron_operator" / "planted.py"
    planted.parent.mkdir()
    planted.write_text(
        '"""A docstring may say NEURON_RUNTIME_COMPILE_REQUEST."""\n'
        'ENV = {"name": "NEURON_RUNTIME_COMPILE_REQUEST"}\n'
        'PATH = f"/api/v1/x/proxy/metrics"\n'
        "EXIT_TRACE = 4\n"
    )
    hits = _copies(planted, root=tmp_path)
    assert len(hits) == 3, hits
    assert any("COMPILE_REQUEST_ENV" in h for h in hits)
    assert any("METRICS_PATH" in h for h in hits)
    assert any("EXIT_TRACE" in h for h in hits)


def test_no_literal_copy_of_the_contract_remains() -> None:
    hits = [hit for path in SCANNED for hit in _copies(path)]
    assert not hits, "\n".join(hits)


def test_every_reason_has_one_exit_code_and_permanence_never_shares_a_code() -> None:
    assert all(isinstance(f.exit_code, int) and f.exit_code > 0 for f in CompileFailure)
    assert all(isinstance(r.exit_code, int) and r.exit_code > 0 for r in ServeRefusal)
    permanent = {f.exit_code for f in CompileFailure if f.permanent}
    retried = {f.exit_code for f in CompileFailure if not f.permanent}
    assert not permanent & retried
    assert contract.permanent_compile_exit_codes() == tuple(sorted(permanent))
    # Retrying cannot fix these; an unreachable endpoint or a crash of the tracer may pass on a new pod.
    assert CompileFailure.STORAGE_UNAVAILABLE not in {f for f in CompileFailure if f.permanent}
    assert CompileFailure.BAD_REQUEST.permanent


@pytest.mark.parametrize(
    "message",
    [
        Failure(reason="TraceFailed", message="neuronx-cc: unsupported op aten::foo"),
        Failure(reason="ParityFailed", message="parity FAILED", max_abs_error="inf", atol=0.05, rtol=0.01),
        CompileResult(
            cache_key="b" * 64,
            uri="s3://bucket/prefix/" + "b" * 64,
            sha256="a" * 64,
            size_bytes=10,
            total_bytes=None,
            compile_seconds=1.5,
            neuron_core_version="v2",
            compiler_version="2.21",
            torch_version="2.8.0",
            cached=False,
            max_abs_error=0.0,
        ),
        GcResult(dry_run=True, root="/a", kept=1, retained=0, expired_count=0),
    ],
    ids=["failure", "parity", "compile", "gc"],
)
def test_what_the_runtime_writes_the_operator_reads_back(message: contract.TerminationMessage) -> None:
    line = message.line()
    assert "\n" not in line
    assert json.loads(line)["status"] == message.status
    assert type(message).parse("progress line\n" + line + "\n") == message


def test_a_long_message_is_cut_below_kubelets_limit() -> None:
    line = Failure(reason="TraceFailed", message="é" * 10_000).line()
    assert len(line.encode()) < contract.TERMINATION_MESSAGE_LIMIT
    parsed = Failure.parse(line)
    assert parsed is not None
    assert parsed.message.endswith("…")
    assert len(parsed.message) > 500  # 6 bytes of JSON per character: most of the 4096 bytes are used


def test_a_long_gc_result_lists_fewer_artifacts_and_keeps_every_count() -> None:
    expired = [{"cacheKey": f"{i:064x}", "sizeBytes": i, "lastReferenced": "2026-01-01T00:00:00Z"} for i in range(200)]
    result = GcResult(dry_run=False, root="/a", kept=3, retained=1, expired=expired, expired_count=200)
    line = result.line()
    assert len(line.encode()) < contract.TERMINATION_MESSAGE_LIMIT
    parsed = GcResult.parse(line)
    assert parsed is not None
    assert parsed.expired_count == 200
    assert 0 < len(parsed.expired) < 200
    assert parsed.expired == expired[: len(parsed.expired)]


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "not json",
        '{"status": "Succeeded"}',  # a compile result without its digest
        '{"status": "Succeeded", "cacheKey": "x", "uri": "u", "sha256": "' + "a" * 64 + '"}',  # not a key
        '{"status": "Failed", "reason": "TraceFailed"}\nnot json',  # the last line counts
        "[1, 2]",
    ],
)
def test_a_malformed_compile_result_reads_none(text: str | None) -> None:
    assert CompileResult.parse(text) is None


def test_a_newer_runtimes_extra_fields_are_ignored() -> None:
    line = '{"status": "Failed", "reason": "TraceFailed", "message": "m", "addedLater": [1]}'
    assert Failure.parse(line) == Failure(reason="TraceFailed", message="m")


def test_the_operator_may_import_only_the_contract_and_config_of_the_runtime() -> None:
    """import-linter's deny-list names every other runtime module, so a new one is covered from its first line."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (rule,) = [c for c in contracts if c["name"] == "The operator uses only the runtime's contract and config models"]
    package = REPO / "runtime" / "neuron_runtime"
    modules = {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()
    }
    others = {f"neuron_runtime.{m}" for m in modules - {"__init__", "config", "contract"}}
    assert others == set(rule["forbidden_modules"]) - {"grpc"}


def _documented_codes(section: str) -> dict[str, int]:
    """reason -> exit code from the lines `  <code>  <Reason>[ / <Reason>]  ...` of one section of cli's help."""
    import re

    found: dict[str, int] = {}
    for line in section.splitlines():
        if m := re.match(r"^\s+(\d+)\s+([A-Z]\w+)(?:\s+/\s+([A-Z]\w+))?\s", line + " "):
            for reason in filter(None, m.groups()[1:]):
                found[reason] = int(m.group(1))
    return found


def test_the_clis_documented_exit_codes_are_the_contracts() -> None:
    from neuron_runtime import cli

    doc = cli.__doc__ or ""
    compile_part, rest = doc.split("`--output-root`", 1)
    gc_part, serve_part = rest.split("`serve` exits", 1)
    assert _documented_codes(compile_part) == {f.value: f.exit_code for f in CompileFailure}
    gc = _documented_codes(gc_part)
    assert set(gc) == {"BadRequest", "StorageAccessDenied", "StorageNotFound", "StorageUnavailable", "InternalError"}
    assert all(CompileFailure(r).exit_code == code for r, code in gc.items())
    assert _documented_codes(serve_part) == {r.value: r.exit_code for r in ServeRefusal}
    permanent = ", ".join(str(c) for c in contract.permanent_compile_exit_codes())
    assert f"does not retry: {permanent})" in compile_part
