"""Mutation check of the decision core: every rule in .ci/mutations.toml, disabled, must fail the fast tests.

Each mutation replaces one snippet (which must occur exactly once) in a private copy of the repository, runs the
decision-core tests (test_job_outcome, test_reconcile_core, then test_status) against that copy with ``-x``, and
requires them to fail. The working tree is never touched, so other
edits can go on while this runs. Prints one line per mutation (killed / SURVIVED / ...) and exits non-zero when a
mutation survives, a snippet is missing or ambiguous, or a mutant does not even import (a broken table entry).

    .venv/bin/python .ci/mutations.py [--jobs N] [--only TEXT] [--list]

How the copy is really what runs: the package is installed editable (a meta-path finder appended *after*
``sys.path`` lookup), so ``PYTHONPATH=<copy>/operator:<copy>/runtime`` wins; before any mutation each copy checks
that ``neuron_operator.reconcile`` and ``neuron_runtime`` import from it, and the unmutated tests must pass there.
Bytecode goes to a private ``PYTHONPYCACHEPREFIX`` (the environment may forbid writing it: every run would
recompile hundreds of modules); a mutated file gets a fresh mtime so its stale bytecode is never used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / ".ci" / "mutations.toml"
#: What the copy needs: the packages, the tests (their conftest imports e2e's localcluster), the CRDs (memapi).
COPIED = ("operator", "runtime", "tests", "e2e", "crds", "pyproject.toml")
#: Run in two stages: most mutants die in the first (cheap: no hypothesis); a survivor meets the second too.
STAGES = (
    ("tests/operator/test_job_outcome.py", "tests/operator/test_reconcile_core.py"),
    ("tests/operator/test_status.py",),
    # Autoscaling and canary rules: their pure tests and the load-aware reconcile passes.
    ("tests/operator/test_autoscale.py", "tests/operator/test_canary.py", "tests/operator/test_load_reconcile.py"),
    # The S3 rules, against the real local S3 server (the fast tests that need only the weed binary); the CLI and
    # serve tests (subprocesses) are left to the full run.
    ("tests/runtime/test_objectstore.py", "-k", "not compile_publishes and not serve"),
)
PYTEST = (
    "-m",
    "pytest",
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "--assert=plain",  # pass/fail is all that counts; rewriting hundreds of plugin modules costs seconds
    "-m",
    "not cluster and not images",
)
TIMEOUT_S = 180


@dataclass(frozen=True)
class Mutation:
    rule: str
    file: str
    original: str
    replacement: str


@dataclass(frozen=True)
class Result:
    mutation: Mutation
    outcome: str  # killed | killed (timeout) | SURVIVED | NOT FOUND | AMBIGUOUS | BROKEN
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome.startswith("killed")


def load_table(path: Path = TABLE) -> list[Mutation]:
    entries = tomllib.loads(path.read_text())["mutation"]
    return [Mutation(e["rule"], e["file"], e["original"], e["replacement"]) for e in entries]


class Copy:
    """A private copy of the repository (one per worker), where one mutation at a time is applied."""

    def __init__(self, root: Path, pycache: Path) -> None:
        self.root = root
        for name in COPIED:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(
                    src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc")
                )
            else:
                shutil.copy2(src, root / name)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        env["PYTHONPATH"] = os.pathsep.join(str(root / p) for p in ("operator", "runtime", "e2e"))
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
        self.env = env
        self.bump = 0

    def run(self, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def check_imports(self) -> str | None:
        """None when the copy's packages are the ones imported, else what was imported instead."""
        probe = self.run(
            "-c",
            "import neuron_operator.reconcile as r, neuron_operator.resources.compile as c, neuron_runtime as n;"
            "print(r.__file__); print(c.__file__); print(n.__file__)",
            timeout=120,
        )
        if probe.returncode != 0:
            return probe.stderr[-2000:]
        files = probe.stdout.split()
        wrong = [f for f in files if not Path(f).resolve().is_relative_to(self.root.resolve())]
        return f"imported from outside the copy: {wrong}" if wrong or len(files) != 3 else None

    def write(self, relative: str, text: str, mtime: float) -> None:
        path = self.root / relative
        path.write_text(text)
        os.utime(path, (mtime, mtime))

    def mutate(self, m: Mutation) -> Result:
        path = self.root / m.file
        original = path.read_text()
        count = original.count(m.original)
        if count != 1:
            return Result(m, "NOT FOUND" if count == 0 else "AMBIGUOUS", 0.0, f"{count} occurrences in {m.file}")
        mtime = path.stat().st_mtime
        self.bump += 1
        started = time.monotonic()
        try:
            # A distinct mtime (whole seconds, as bytecode records it) invalidates any cached bytecode of the file.
            self.write(m.file, original.replace(m.original, m.replacement), mtime + 1000 + self.bump)
            try:
                for stage in STAGES:
                    proc = self.run(*PYTEST, *stage)
                    if proc.returncode != 0:
                        break
            except subprocess.TimeoutExpired:
                return Result(m, "killed (timeout)", time.monotonic() - started)
        finally:
            self.write(m.file, original, mtime)
        seconds = time.monotonic() - started
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
        if proc.returncode == 1:  # tests failed
            failed = next((line for line in tail if line.startswith(("FAILED", "ERROR"))), "")
            return Result(m, "killed", seconds, failed)
        if proc.returncode == 0:
            return Result(m, "SURVIVED", seconds)
        return Result(m, "BROKEN", seconds, f"pytest exit code {proc.returncode}: " + " | ".join(tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel copies")
    parser.add_argument("--only", default="", help="run only the mutations whose rule contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)

    mutations = [m for m in load_table() if args.only.lower() in m.rule.lower()]
    if args.list:
        for m in mutations:
            print(f"{m.file}: {m.rule}")
        return 0
    if not mutations:
        print("no mutation selected", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="neuron-mutations-") as tmp:
        pycache = Path(tmp) / "pycache"
        jobs = max(1, min(args.jobs, len(mutations)))
        copies = [Copy(Path(tmp) / f"copy{i}", pycache) for i in range(jobs)]
        for c in copies:
            if (problem := c.check_imports()) is not None:
                print(f"the mutated copy would not be what is tested: {problem}", file=sys.stderr)
                return 2
        baseline = copies[0].run(*PYTEST, *(t for stage in STAGES for t in stage))
        if baseline.returncode != 0:
            print("the unmutated tests fail; fix them first:\n" + (baseline.stdout + baseline.stderr)[-4000:])
            return 2
        print(f"baseline: the unmutated tests pass ({time.monotonic() - started:.0f} s); {len(mutations)} mutations")

        free: queue.Queue[Copy] = queue.Queue()
        for c in copies:
            free.put(c)

        def one(m: Mutation) -> Result:
            c = free.get()
            try:
                return c.mutate(m)
            finally:
                free.put(c)

        results: list[Result] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for r in pool.map(one, mutations):
                results.append(r)
                print(f"  {r.outcome:<17} {r.seconds:6.1f}s  {r.mutation.rule}", flush=True)
                if not r.ok and r.detail:
                    print(f"      {r.detail}", flush=True)

    bad = [r for r in results if not r.ok]
    width = max(len(r.mutation.rule) for r in results)
    print()
    print(f"{'rule':<{width}}  {'result':<17} seconds")
    for r in results:
        print(f"{r.mutation.rule:<{width}}  {r.outcome:<17} {r.seconds:7.1f}")
    killed = len(results) - len(bad)
    print(f"\n{killed}/{len(results)} mutations killed in {time.monotonic() - started:.0f} s")
    for r in bad:
        print(f"{r.outcome}: {r.mutation.rule} ({r.mutation.file}) {r.detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
