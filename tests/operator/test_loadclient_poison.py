"""The load client's poisoned requests (``--poison-every``/``--poison-value``), against a local fake server.

A canary-rollout test sends, next to normal traffic, requests that a "bad new model version"
(``neuron_runtime.zoo:poisoned_mlp``) fails on, and must still tell real loss from those expected failures. These
tests hold ``loadclient.py`` to that: every N-th request by one sequence over all workers carries the poison as its
first element (and no other does), poisoned outcomes are counted apart in the result, and poisoned failures
cannot crowd real ones out of the error samples. The fake server answers like the runtime serving that model: 400
when the first element is the poison, 200 otherwise, or 503 for the non-poisoned requests while the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loadclient
import pytest
from aiohttp import web

POISON = 7.0


class PoisonSensitiveServer:
    """An OIP v2 look-alike that fails the requests whose first element is the poison; records every request."""

    def __init__(self) -> None:
        self.fail_clean = False  # answer 503 to the non-poisoned requests too (real loss)
        self.seen: list[tuple[str, float]] = []  # (request id, first element), in arrival order
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def infer(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        first = float(body["inputs"][0]["data"][0])
        self.seen.append((body["id"], first))
        if first == POISON:
            return web.json_response({"error": "the model failed on this request's values: index 1"}, status=400)
        if self.fail_clean:
            return web.json_response({"error": "shutting down"}, status=503)
        return web.json_response({"id": body["id"], "model_name": "m", "outputs": [{"name": "y", "data": [1]}]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/models/m/infer", self.infer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _eventually(predicate: Callable[[], bool], what: str) -> None:
    """Poll the client's counts (they change in its tasks, in this event loop) with a deadline."""
    try:
        async with asyncio.timeout(20):
            while not predicate():  # noqa: ASYNC110 - the counts have no event to wait on; polling them is the point
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _args(port: int, stop_file: Path, *extra: str) -> Any:
    return loadclient.parse_args(
        [
            f"--url=http://127.0.0.1:{port}/v2/models/m/infer",
            "--concurrency=3",
            "--interval-ms=1",
            "--timeout-s=5",
            f"--stop-file={stop_file}",
            "--progress-s=60",
            *extra,
        ]
    )


async def test_every_nth_request_is_poisoned_and_counted_apart(tmp_path: Path) -> None:
    server = PoisonSensitiveServer()
    await server.start()
    stop_file = tmp_path / "stop"
    tally = loadclient.Tally()
    task = asyncio.ensure_future(loadclient.run(_args(server.port, stop_file, "--poison-every=3"), tally))
    try:
        await _eventually(lambda: tally.total >= 60, "60 answers")
        stop_file.touch()
        result = await asyncio.wait_for(task, 10)
    finally:
        await server.stop()

    # Every request started has ended (the workers finish theirs), so the shared sequence ran 1..total and every
    # third number was poisoned, whichever worker drew it.
    total = result["total"]
    assert len(server.seen) == total
    poisoned_ids = sorted(i for i, first in server.seen if first == POISON)
    assert len(poisoned_ids) == total // 3
    assert all(first in (POISON, 0.0) for _, first in server.seen), server.seen
    assert all(i.endswith("-poisoned") == (first == POISON) for i, first in server.seen), server.seen

    n = total // 3
    assert result["poisoned"] == {
        "total": n,
        "ok": 0,
        "lost": n,
        "errors": {"http_400": n},
        "first_error": result["first_error"],
        "last_error": result["last_error"],
    }
    # Counted as today: the poisoned failures are errors of the run too.
    assert result["total"] == result["ok"] + sum(result["errors"].values())
    assert result["errors"] == {"http_400": n}
    # ... and "every non-poisoned request succeeded" reads:
    assert result["lost"] == result["poisoned"]["lost"]
    assert result["ok"] == total - n
    samples = result["error_samples"]
    assert len(samples) == loadclient.POISONED_SAMPLES
    assert all(s["poisoned"] is True and s["kind"] == "http_400" for s in samples)


async def test_real_loss_stays_visible_next_to_poisoned_failures(tmp_path: Path) -> None:
    server = PoisonSensitiveServer()
    await server.start()
    stop_file = tmp_path / "stop"
    tally = loadclient.Tally()
    task = asyncio.ensure_future(loadclient.run(_args(server.port, stop_file, "--poison-every=2"), tally))
    try:
        # More poisoned failures than their samples hold first, then real loss, then normal service again.
        await _eventually(lambda: tally.poisoned.total > loadclient.POISONED_SAMPLES + 5, "poisoned failures")
        server.fail_clean = True
        await _eventually(lambda: tally.errors["http_503"] >= 3, "real failures counted")
        server.fail_clean = False
        ok = tally.ok
        await _eventually(lambda: tally.ok >= ok + 5, "OK answers again")
        stop_file.touch()
        result = await asyncio.wait_for(task, 10)
    finally:
        await server.stop()

    poisoned = result["poisoned"]
    assert poisoned["errors"] == {"http_400": poisoned["total"]}
    assert poisoned["lost"] == poisoned["total"] > loadclient.POISONED_SAMPLES
    real = result["errors"]["http_503"]
    assert result["lost"] - poisoned["lost"] == real >= 3
    assert result["total"] == result["ok"] + poisoned["lost"] + real
    flagged = [s for s in result["error_samples"] if s.get("poisoned")]
    unflagged = [s for s in result["error_samples"] if not s.get("poisoned")]
    assert len(flagged) == loadclient.POISONED_SAMPLES
    assert [s["kind"] for s in unflagged] == ["http_503"] * min(real, loadclient.ERROR_SAMPLES)


async def test_without_the_option_nothing_is_poisoned(tmp_path: Path) -> None:
    server = PoisonSensitiveServer()
    await server.start()
    stop_file = tmp_path / "stop"
    tally = loadclient.Tally()
    task = asyncio.ensure_future(loadclient.run(_args(server.port, stop_file), tally))
    try:
        await _eventually(lambda: tally.total >= 20, "20 answers")
        stop_file.touch()
        result = await asyncio.wait_for(task, 10)
    finally:
        await server.stop()
    assert {first for _, first in server.seen} == {0.0}
    assert result["lost"] == 0
    assert result["poisoned"] == {
        "total": 0,
        "ok": 0,
        "lost": 0,
        "errors": {},
        "first_error": None,
        "last_error": None,
    }


def test_the_poison_replaces_the_first_element_only() -> None:
    clean = loadclient.infer_body("r", "x", [1, 4], "FP32")
    poisoned = loadclient.infer_body("r", "x", [1, 4], "FP32", poison=POISON)
    assert poisoned["inputs"][0]["data"] == [POISON, *clean["inputs"][0]["data"][1:]]
    assert clean["inputs"][0]["data"][0] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--poison-every=-1"], "--poison-every must be 0 (never) or a positive N"),
        (["--poison-every=2", "--poison-value=nan"], "--poison-value must be a finite number"),
        (["--poison-every=2", "--poison-value=inf"], "--poison-value must be a finite number"),
        (["--poison-every=2", "--poison-value=0"], "what every request's first element is already"),
    ],
)
def test_bad_poison_options_are_refused_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        loadclient.parse_args(["--url=http://127.0.0.1:1/v2/models/m/infer", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_defaults_never_poison() -> None:
    args = loadclient.parse_args(["--url=http://127.0.0.1:1/v2/models/m/infer"])
    assert args.poison_every == 0
    assert args.poison_value == POISON
