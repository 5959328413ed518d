"""`python -m benchmarks.operator_logs [N]`: what the operator logs at INFO with N NeuronDeployments.

In process, against the in-memory apiserver behind lightkube's real client (``tests/operator/memapi.py``), with the
operator's own logging configuration (``neuron_operator.logs.configure``): N NeuronDeployments are created and
rolled out, then every one is reconciled again three times (three resync cycles of an unchanged world). Prints the
lines written while converging and per idle cycle, and the idle rate at the default 60 s resync. Counts every
line, whichever logger wrote it (HTTP client lines included).
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "operator"))
sys.path.insert(0, str(ROOT / "tests"))

from memapi import MemApi  # noqa: E402
from test_reconcile_core import NS, SETTINGS, Clock, World, claim, deployment_manifest  # noqa: E402

from neuron_operator import logs  # noqa: E402

RESYNC_SECONDS = 60.0  # OperatorSettings.resync_seconds default


async def run(n: int) -> None:
    stream = io.StringIO()
    logs.configure("INFO", "text", stream)
    clock = Clock()
    api = MemApi(clock=clock, default_namespace=NS)
    api.seed(claim(SETTINGS.artifact_pvc))
    world = World(api, clock)
    await world.compiled_model()
    names = [f"d{i}" for i in range(n)]
    for name in names:
        api.seed(deployment_manifest(name=name))
    start = time.perf_counter()
    for name in names:
        await world.deployment_pass(name)
        world.roll_out(name)
        await world.deployment_pass(name)
    converge_lines = stream.getvalue().count("\n")
    converge_s = time.perf_counter() - start
    mark = len(stream.getvalue())
    for _ in range(3):
        for name in names:
            await world.deployment_pass(name)
    idle = stream.getvalue()[mark:]
    idle_lines = idle.count("\n") / 3
    by_logger = Counter(line.split(" ")[3] for line in stream.getvalue().splitlines() if line.count(" ") > 3)
    print(f"{n} NeuronDeployments (+1 NeuronModel), log level INFO, text format")
    print(
        f"converging (create + roll out each): {converge_lines} lines ({converge_lines / n:.2f} per object), "
        f"{converge_s:.1f} s of reconcile"
    )
    print(
        f"idle resync cycle: {idle_lines:.0f} lines per cycle -> {idle_lines / RESYNC_SECONDS:.2f} lines/s "
        f"at the default {RESYNC_SECONDS:.0f} s resync"
    )
    print("lines by logger:", dict(by_logger.most_common()))


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
