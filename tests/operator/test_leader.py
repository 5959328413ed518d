"""Leader election on a Lease, against an in-memory apiserver and an injected clock.

``FakeLeaseApi`` stands in for lightkube's ``AsyncClient`` under the real ``Kube`` wrapper (so ``Kube.get``'s
404 and ``Kube.create``'s 409 handling run too): objects carry a ``resourceVersion``, ``replace`` with a stale
one fails with the 409 Conflict ``ApiError`` lightkube raises, ``create`` of an existing name with 409
AlreadyExists. Races are made deterministic with a barrier that holds every candidate after its read until
all have read.

Outages are what lightkube lets through from its HTTP client, httpx2 (lightkube 1.x; a fork of httpx with its
own exception classes): each candidate reaches the apiserver over its own ``Link``, which can refuse
connections (``httpx2.ConnectError``, as raised for ECONNREFUSED), raise ``OSError``, or hang (the request
awaits an ``asyncio.Event`` that never fires: under looptime only the elector's own bound can end it).
``FakeLeaseApi.broken`` is the apiserver answering 500 to everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from prometheus_client import REGISTRY

from neuron_operator.kube import Kube
from neuron_operator.leader import LeaderElector

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NS, NAME = "neuron-system", "neuron-operator"
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"
#: Loop time is fake in every test here, so a lost wake-up fails at a timeout at once instead of hanging.
pytestmark = pytest.mark.looptime


def api_error(code: int, reason: str, message: str) -> ApiError:
    """An ApiError built the way lightkube builds one: from the apiserver's Status response."""
    request = httpx2.Request("PUT", f"https://apiserver.test/apis/coordination.k8s.io/v1/namespaces/{NS}/leases")
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return ApiError(request=request, response=httpx2.Response(code, json=status, request=request))


class FakeLeaseApi:
    """The three AsyncClient calls LeaderElector makes through Kube, with optimistic locking."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str | None, str], dict[str, Any]] = {}
        self.version = 0
        self.read_barrier: asyncio.Barrier | None = None  # holds the first reads until all have read
        self._held = 0
        self.broken = False  # every call fails with 500 (apiserver unreachable)
        self.writes = 0

    def _check(self) -> None:
        if self.broken:
            raise api_error(500, "InternalError", "etcdserver: request timed out")

    def _stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(self.version)
        return stored

    async def get(self, res: Any, name: str, namespace: str | None = None) -> Any:
        self._check()
        obj = self.objects.get((namespace, name))
        if self.read_barrier is not None and self._held < self.read_barrier.parties:
            self._held += 1
            await self.read_barrier.wait()
        if obj is None:
            raise api_error(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return res(copy.deepcopy(obj))

    async def create(self, obj: Any, namespace: str | None = None) -> Any:
        self._check()
        key = (namespace, obj["metadata"]["name"])
        if key in self.objects:
            raise api_error(409, "AlreadyExists", f'leases.coordination.k8s.io "{key[1]}" already exists')
        self.writes += 1
        self.objects[key] = self._stored(obj)
        return type(obj)(copy.deepcopy(self.objects[key]))

    async def replace(self, obj: Any, name: str, namespace: str | None = None, **_: Any) -> Any:
        self._check()
        key = (namespace, name)
        current = self.objects.get(key)
        if current is None:
            raise api_error(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        self.writes += 1
        self.objects[key] = self._stored(obj)
        return type(obj)(copy.deepcopy(self.objects[key]))

    def lease(self) -> dict[str, Any]:
        return self.objects[(NS, NAME)]["spec"]


def connect_error() -> httpx2.ConnectError:
    """What httpx2 raises (and lightkube lets through) when the apiserver refuses the connection."""
    request = httpx2.Request("GET", f"https://apiserver.test/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{NAME}")
    return httpx2.ConnectError("[Errno 111] Connection refused", request=request)


class Link:
    """One candidate's path to the apiserver: the AsyncClient calls, unless cut (``error``) or hung."""

    def __init__(self, api: FakeLeaseApi) -> None:
        self.api = api
        self.error: Exception | None = None  # raised by every request (connection refused, reset, ...)
        self.hung = False  # every request hangs: no answer, no error
        self.calls = 0
        self.abandoned = 0  # hung requests cancelled by the caller (its own timeout)
        self._never = asyncio.Event()

    async def _check(self) -> None:
        self.calls += 1
        if self.hung:
            try:
                await self._never.wait()
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        if self.error is not None:
            raise self.error

    async def get(self, res: Any, name: str, namespace: str | None = None) -> Any:
        await self._check()
        return await self.api.get(res, name, namespace=namespace)

    async def create(self, obj: Any, namespace: str | None = None) -> Any:
        await self._check()
        return await self.api.create(obj, namespace=namespace)

    async def replace(self, obj: Any, name: str, namespace: str | None = None, **kw: Any) -> Any:
        await self._check()
        return await self.api.replace(obj, name, namespace=namespace, **kw)


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    api: FakeLeaseApi = field(default_factory=FakeLeaseApi)
    clock: Callable[[], datetime] = field(default_factory=FakeClock)
    links: dict[str, Link] = field(default_factory=dict)

    def candidate(self, identity: str, **kw: Any) -> LeaderElector:
        self.links[identity] = Link(self.api)
        kube = Kube(self.links[identity])  # type: ignore[arg-type]  # duck-typed AsyncClient
        kw.setdefault("lease_duration", 15.0)
        kw.setdefault("renew_deadline", 10.0)
        kw.setdefault("retry_period", 2.0)
        return LeaderElector(kube, NS, NAME, identity, clock=self.clock, **kw)


@pytest.fixture
def world() -> World:
    return World()


def fake_clock(world: World) -> FakeClock:
    assert isinstance(world.clock, FakeClock)
    return world.clock


def micro(t: datetime) -> str:
    return t.strftime(MICRO)


async def test_first_candidate_creates_and_holds_the_lease(world: World) -> None:
    a = world.candidate("operator-a")
    assert await a.try_acquire_or_renew() is True
    assert world.api.lease() == {
        "holderIdentity": "operator-a",
        "leaseDurationSeconds": 15,
        "acquireTime": micro(T0),
        "renewTime": micro(T0),
        "leaseTransitions": 0,
    }


async def test_second_candidate_waits_while_the_lease_is_fresh(world: World) -> None:
    clock = fake_clock(world)
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.try_acquire_or_renew()
    for _ in range(3):
        clock.advance(14)  # just inside the lease duration each time...
        assert await b.try_acquire_or_renew() is False
        assert await a.try_acquire_or_renew() is True  # ...because the holder renews
    assert world.api.lease()["holderIdentity"] == "operator-a"
    assert world.api.lease()["renewTime"] == micro(clock.now)
    assert world.api.lease()["acquireTime"] == micro(T0)  # renewing keeps the acquire time
    assert world.api.lease()["leaseTransitions"] == 0


async def test_lease_is_not_taken_at_exactly_the_duration(world: World) -> None:
    clock = fake_clock(world)
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.try_acquire_or_renew()
    clock.advance(15)
    assert await b.try_acquire_or_renew() is False


async def test_second_candidate_takes_over_after_the_lease_duration(world: World) -> None:
    clock = fake_clock(world)
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.try_acquire_or_renew()
    clock.advance(15.5)  # a stopped renewing (killed, partitioned)
    assert await b.try_acquire_or_renew() is True
    assert world.api.lease() == {
        "holderIdentity": "operator-b",
        "leaseDurationSeconds": 15,
        "acquireTime": micro(clock.now),
        "renewTime": micro(clock.now),
        "leaseTransitions": 1,
    }
    # The old leader cannot renew a lease it lost.
    assert await a.try_acquire_or_renew() is False
    assert world.api.lease()["holderIdentity"] == "operator-b"


async def test_lease_transitions_count_every_handover(world: World) -> None:
    clock = fake_clock(world)
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.try_acquire_or_renew()
    for expected, winner in enumerate([b, a, b], start=1):
        clock.advance(16)
        assert await winner.try_acquire_or_renew()
        assert world.api.lease()["leaseTransitions"] == expected
        assert await winner.try_acquire_or_renew()  # renewals do not count
        assert world.api.lease()["leaseTransitions"] == expected


async def test_the_holders_lease_duration_decides_expiry(world: World) -> None:
    clock = fake_clock(world)
    a = world.candidate("operator-a", lease_duration=15.0)
    b = world.candidate("operator-b", lease_duration=60.0)
    assert await a.try_acquire_or_renew()
    clock.advance(16)
    assert await b.try_acquire_or_renew() is True  # a's lease said 15 s, b's own setting does not matter


async def test_a_released_lease_is_taken_at_once(world: World) -> None:
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.try_acquire_or_renew()
    world.api.objects[(NS, NAME)]["spec"]["holderIdentity"] = ""  # a released it on shutdown
    assert await b.try_acquire_or_renew() is True
    assert world.api.lease()["holderIdentity"] == "operator-b"


async def test_race_for_an_expired_lease_has_exactly_one_winner(world: World) -> None:
    clock = fake_clock(world)
    assert await world.candidate("operator-a").try_acquire_or_renew()
    clock.advance(20)
    candidates = [world.candidate(f"operator-{i}") for i in range(3)]
    world.api.read_barrier = asyncio.Barrier(len(candidates))  # everyone reads the same resourceVersion
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
    assert sorted(results) == [False, False, True]
    winner = candidates[results.index(True)]
    assert world.api.lease()["holderIdentity"] == winner.identity
    assert world.api.lease()["leaseTransitions"] == 1


async def test_race_to_create_the_lease_has_exactly_one_winner(world: World) -> None:
    candidates = [world.candidate("operator-a"), world.candidate("operator-b")]
    world.api.read_barrier = asyncio.Barrier(2)  # both see no Lease, both create
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
    assert sorted(results) == [False, True]
    assert world.api.lease()["holderIdentity"] == candidates[results.index(True)].identity
    assert world.api.writes == 1


async def test_other_api_errors_propagate(world: World) -> None:
    world.api.broken = True
    with pytest.raises(ApiError) as info:
        await world.candidate("operator-a").try_acquire_or_renew()
    assert info.value.status.code == 500


# ------------------------------------------------------------ acquire / hold: the clock follows loop time


def loop_clock() -> Callable[[], datetime]:
    """Wall clock following the (fake) loop time, so lease times and sleeps move together."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    return lambda: T0 + timedelta(seconds=loop.time() - start)


async def test_acquire_blocks_until_the_lease_expires() -> None:
    world = World(clock=loop_clock())
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await world.candidate("operator-a").try_acquire_or_renew()  # then a dies without renewing
    async with asyncio.timeout(60):
        await world.candidate("operator-b").acquire()
    waited = loop.time() - start
    assert 15 < waited <= 15 + 2  # the first retry after the lease duration
    assert world.api.lease()["holderIdentity"] == "operator-b"


async def test_hold_renews_and_returns_once_renewal_fails_past_the_deadline() -> None:
    world = World(clock=loop_clock())
    a = world.candidate("operator-a")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(120)  # fake time: two minutes of renewals every retry period
    assert not holding.done()
    assert world.api.lease()["renewTime"] >= micro(T0 + timedelta(seconds=118))
    world.api.broken = True
    last_renewal = datetime.strptime(world.api.lease()["renewTime"], MICRO).replace(tzinfo=UTC)
    async with asyncio.timeout(60):
        await holding  # leadership lost: hold returns so the process can exit
    # It gives up renew_deadline (10 s) after the start of the last successful renewal, not later.
    assert 10 <= (world.clock() - last_renewal).total_seconds() <= 10 + 2
    assert world.api.lease()["holderIdentity"] == "operator-a"  # nobody else took it meanwhile
    assert not a.is_leader


# ------------------------------------------------------------ outages: every failure counts, none is fatal

#: What a candidate's requests can run into; lightkube lets httpx2's and the OS's exceptions through unchanged.
FAILURES: dict[str, Callable[[Link], None]] = {
    "connection refused": lambda link: setattr(link, "error", connect_error()),
    "OSError": lambda link: setattr(link, "error", ConnectionResetError(104, "Connection reset by peer")),
    "apiserver 500": lambda link: setattr(link, "error", api_error(500, "InternalError", "etcdserver: timeout")),
    "request hangs": lambda link: setattr(link, "hung", True),
    "unexpected error": lambda link: setattr(link, "error", RuntimeError("a bug, not an outage")),
}


def heal(link: Link) -> None:
    link.error, link.hung = None, False


def leader_gauge(identity: str) -> float | None:
    return REGISTRY.get_sample_value("neuron_operator_leader", {"identity": identity})


def renewed_at(world: World) -> datetime:
    return datetime.strptime(world.api.lease()["renewTime"], MICRO).replace(tzinfo=UTC)


@pytest.mark.parametrize("failure", FAILURES)
async def test_renewal_failing_then_recovering_before_the_deadline_keeps_leadership(failure: str) -> None:
    world = World(clock=loop_clock())
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(11)  # renewals at 2, 4, ..., 10
    assert renewed_at(world) == T0 + timedelta(seconds=10)
    acquiring = asyncio.create_task(b.acquire())  # a healthy standby watches the Lease throughout
    FAILURES[failure](world.links["operator-a"])
    await asyncio.sleep(6.5)  # a's attempts fail (a hung one is abandoned at its attempt timeout, 5 s)
    assert renewed_at(world) == T0 + timedelta(seconds=10)
    assert not holding.done()
    assert a.is_leader
    heal(world.links["operator-a"])  # t = 17.5: back before the deadline (t = 20)
    await asyncio.sleep(30)
    assert not holding.done(), "leadership kept: the renewal succeeded within the renew deadline"
    assert a.is_leader
    assert leader_gauge("operator-a") == 1
    assert renewed_at(world) >= world.clock() - timedelta(seconds=2)
    assert not acquiring.done(), "the Lease never expired, so the standby never took it"
    assert not b.is_leader
    assert leader_gauge("operator-b") == 0
    for task in (holding, acquiring):
        task.cancel()


@pytest.mark.parametrize("failure", FAILURES)
async def test_renewal_failing_past_the_deadline_ends_leadership_before_the_lease_expires(failure: str) -> None:
    world = World(clock=loop_clock())
    loop = asyncio.get_running_loop()
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(11)
    last_renewal = loop.time() - 1  # t = 10
    assert renewed_at(world) == T0 + timedelta(seconds=10)
    FAILURES[failure](world.links["operator-a"])  # a is cut off; the standby b still reaches the apiserver
    acquiring = asyncio.create_task(b.acquire())
    async with asyncio.timeout(60):
        await holding  # returns (leadership lost) instead of raising or renewing forever
    lost_at = loop.time()
    assert 10 <= lost_at - last_renewal <= 10 + 2, "within renew_deadline + retry_period of the last renewal"
    assert not a.is_leader
    assert leader_gauge("operator-a") == 0
    if failure == "request hangs":
        assert world.links["operator-a"].abandoned >= 1
    async with asyncio.timeout(60):
        await acquiring
    # b took the Lease only once it expired (renewTime + 15 s), after a had stopped: never two leaders.
    assert loop.time() - last_renewal > 15
    assert lost_at < loop.time()
    assert world.api.lease()["holderIdentity"] == "operator-b"
    assert b.is_leader
    assert leader_gauge("operator-b") == 1


async def test_a_hung_renewal_ends_leadership_at_the_deadline() -> None:
    world = World(clock=loop_clock())
    loop = asyncio.get_running_loop()
    a = world.candidate("operator-a")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    await asyncio.sleep(11)
    world.links["operator-a"].hung = True  # every request from now on gets no answer at all
    async with asyncio.timeout(60):
        await holding
    assert loop.time() == pytest.approx(20)  # last renewal at 10 + renew_deadline 10: not a moment later
    # The attempt of t = 12 was abandoned at its timeout (17), the one of t = 19 at the deadline.
    assert world.links["operator-a"].abandoned == 2


@pytest.mark.parametrize("failure", ["connection refused", "request hangs", "apiserver 500"])
async def test_a_standby_whose_requests_fail_keeps_trying_and_never_leads(failure: str) -> None:
    world = World(clock=loop_clock())
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    FAILURES[failure](world.links["operator-b"])  # b's very first request fails
    acquiring = asyncio.create_task(b.acquire())
    await asyncio.sleep(60)
    assert not acquiring.done(), "acquire() returns only with the Lease"
    assert not b.is_leader
    assert leader_gauge("operator-b") == 0
    assert world.links["operator-b"].calls >= 8  # it kept trying (every retry period, or attempt timeout)
    heal(world.links["operator-b"])
    await asyncio.sleep(60)  # b reaches the apiserver again: a holds a fresh Lease, b stays a standby
    assert not acquiring.done()
    assert not b.is_leader
    assert world.api.lease()["holderIdentity"] == "operator-a"
    holding.cancel()
    assert await a.release()
    async with asyncio.timeout(2 + 1):  # b's next attempt
        await acquiring
    assert b.is_leader


async def test_release_on_shutdown_hands_over_at_once() -> None:
    world = World(clock=loop_clock())
    loop = asyncio.get_running_loop()
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    await a.acquire()
    holding = asyncio.create_task(a.hold())
    acquiring = asyncio.create_task(b.acquire())  # attempts at 0, 2, 4, ...
    await asyncio.sleep(31)
    holding.cancel()  # graceful shutdown: stop renewing, then release
    with contextlib.suppress(asyncio.CancelledError):
        await holding
    released_at = loop.time()
    assert await a.release() is True
    assert world.api.lease() == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": micro(world.clock()),
        "renewTime": micro(world.clock()),
        "leaseTransitions": 0,
    }
    assert not a.is_leader
    assert leader_gauge("operator-a") == 0
    async with asyncio.timeout(60):
        await acquiring
    assert loop.time() - released_at <= 2, "b's next attempt took it, not one lease duration (15 s) later"
    assert world.api.lease()["holderIdentity"] == "operator-b"
    assert world.api.lease()["leaseTransitions"] == 1
    assert await a.release() is False  # a second release does nothing


async def test_release_without_holding_the_lease_writes_nothing(world: World) -> None:
    clock = fake_clock(world)
    a, b = world.candidate("operator-a"), world.candidate("operator-b")
    assert await a.release() is False  # never acquired: not even a request
    assert world.links["operator-a"].calls == 0
    await a.acquire()
    clock.advance(16)  # a was partitioned without noticing; b took over the expired Lease
    assert await b.try_acquire_or_renew()
    writes = world.api.writes
    assert await a.release() is False
    assert world.api.writes == writes
    assert world.api.lease()["holderIdentity"] == "operator-b"


@pytest.mark.parametrize("failure", ["connection refused", "request hangs", "apiserver 500"])
async def test_release_failing_is_logged_not_raised(failure: str, caplog: pytest.LogCaptureFixture) -> None:
    world = World(clock=loop_clock())
    loop = asyncio.get_running_loop()
    a = world.candidate("operator-a")
    await a.acquire()
    FAILURES[failure](world.links["operator-a"])
    start = loop.time()
    assert await a.release() is False
    assert loop.time() - start <= 10  # bounded by renew_deadline even when the request hangs
    assert "could not release" in caplog.text
    assert world.api.lease()["holderIdentity"] == "operator-a"  # expires on its own after lease_duration


def test_timings_that_allow_two_leaders_are_refused(world: World) -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        world.candidate("operator-a", lease_duration=10.0, renew_deadline=10.0)
    with pytest.raises(ValueError, match="renew_deadline"):
        world.candidate("operator-a", renew_deadline=2.0, retry_period=2.0)
