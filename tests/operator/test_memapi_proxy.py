"""The in-memory apiserver's pod proxy (``memapi.MemApi.set_metrics``), through lightkube's real ``AsyncClient``.

The operator reads each serving pod's ``/metrics`` with lightkube's own authenticated httpx client
(``AsyncClient._client._client``): ``GET /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/metrics``. The answers
copy the real apiserver's: 404 NotFound for a missing pod, 400 ``address not allowed`` for a pod without an IP
(``ResourceLocation`` in pkg/registry/core/pod/strategy.go), 503 ServiceUnavailable ``error trying to reach
service: ...`` when the dial fails (apimachinery's proxy ``Transport.RoundTrip``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient
from memapi import MemApi, Obj

from neuron_operator.resources.loadmetrics import parse_metrics
from neuron_runtime.metrics import Metrics

NS = "serving"
PORT = 8080
IP = "10.244.1.9"


def pod(name: str = "cnn-0", ip: str | None = IP, ports: tuple[int, ...] = (PORT,)) -> Obj:
    status: Obj = {"phase": "Running"}
    if ip is not None:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "containers": [{"name": "runtime", "image": "runtime:1", "ports": [{"containerPort": p} for p in ports]}]
        },
        "status": status,
    }


def proxy_path(name: str = "cnn-0", port: int | str = PORT, path: str = "metrics") -> str:
    return f"/api/v1/namespaces/{NS}/pods/{name}:{port}/proxy/{path}"


@pytest.fixture
def api() -> MemApi:
    return MemApi(default_namespace=NS)


@pytest.fixture
async def client(api: MemApi) -> AsyncIterator[AsyncClient]:
    c = api.client()
    yield c
    await c.close()


async def get(client: AsyncClient, path: str) -> Any:
    return await client._client._client.get(path)


def runtime_text() -> str:
    metrics = Metrics()
    metrics.requests.labels("200").inc(7)
    metrics.request_latency.observe(0.004)
    metrics.in_flight.set(2)
    return metrics.render().decode()


async def test_the_pod_answers_its_metrics(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod())
    text = runtime_text()
    api.set_metrics(NS, "cnn-0", PORT, text)
    mark = api.mark()
    response = await get(client, proxy_path())
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4"
    assert response.text == text
    got = parse_metrics(response.text, at=1.0)  # what the operator will do with it
    assert (dict(got.requests), got.in_flight, got.duration_count) == ({"200": 7}, 2, 1)
    assert api.requests[-1] == ("proxy", "Pod", NS, "cnn-0", "proxy")
    assert api.writes_since(mark) == []  # a read: not journaled


async def test_streaming_as_the_operator_reads_it(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod())
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 3.0\n")
    async with client._client._client.stream("GET", proxy_path(), timeout=5.0) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert response.status_code == 200
    assert body == b"neuron_runtime_requests_in_flight 3.0\n"


async def test_a_missing_pod_is_not_found(api: MemApi, client: AsyncClient) -> None:
    response = await get(client, proxy_path("gone"))
    assert response.status_code == 404
    status = response.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)
    assert status["message"] == 'pods "gone" not found'
    assert api.requests[-1] == ("proxy", "Pod", NS, "gone", "proxy")


async def test_nothing_listening_is_a_refused_connection(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod())
    api.set_metrics(NS, "cnn-0", 9090, "neuron_runtime_requests_in_flight 1\n")  # another port
    response = await get(client, proxy_path())
    assert response.status_code == 503
    status = response.json()
    assert (status["status"], status["reason"], status["code"]) == ("Failure", "ServiceUnavailable", 503)
    assert status["message"] == f"error trying to reach service: dial tcp {IP}:{PORT}: connect: connection refused"


async def test_set_metrics_none_stops_the_listener(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod())
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 1\n")
    assert (await get(client, proxy_path())).status_code == 200
    api.set_metrics(NS, "cnn-0", PORT, None)
    assert (await get(client, proxy_path())).status_code == 503


@pytest.mark.parametrize("ip", [None, "", "127.0.0.1", "0.0.0.0", "169.254.0.5", "not-an-ip"])
async def test_a_pod_without_a_usable_ip_is_a_bad_request(api: MemApi, client: AsyncClient, ip: str | None) -> None:
    """The real apiserver refuses before dialing (pkg/registry/core/pod/strategy.go ``ResourceLocation``)."""
    api.seed(pod(ip=ip))
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 1\n")
    response = await get(client, proxy_path())
    assert response.status_code == 400
    assert (response.json()["reason"], response.json()["message"]) == ("BadRequest", "address not allowed")


async def test_podips_is_what_the_apiserver_dials(api: MemApi, client: AsyncClient) -> None:
    manifest = pod()
    manifest["status"] |= {"podIP": "127.0.0.1", "podIPs": [{"ip": "fd00::7"}]}
    api.seed(manifest)
    response = await get(client, proxy_path())
    refused = "error trying to reach service: dial tcp [fd00::7]:8080: connect: connection refused"
    assert response.json()["message"] == refused


async def test_without_a_port_the_first_container_port_is_used(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod(ports=(PORT, 9090)))
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 1\n")
    response = await get(client, f"/api/v1/namespaces/{NS}/pods/cnn-0/proxy/metrics")
    assert (response.status_code, response.text) == (200, "neuron_runtime_requests_in_flight 1\n")
    scheme = await get(client, f"/api/v1/namespaces/{NS}/pods/http:cnn-0:{PORT}/proxy/metrics")
    assert scheme.status_code == 200


async def test_another_path_is_the_pods_own_not_found(api: MemApi, client: AsyncClient) -> None:
    api.seed(pod())
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 1\n")
    response = await get(client, proxy_path(path="v2/health/ready"))
    assert (response.status_code, response.text) == (404, "404: Not Found")


@pytest.mark.parametrize("ident", ["a:b:c:d", "ftp:cnn-0:8080", ":8080"])
async def test_a_malformed_pod_id_is_a_bad_request(api: MemApi, client: AsyncClient, ident: str) -> None:
    api.seed(pod())
    response = await get(client, f"/api/v1/namespaces/{NS}/pods/{ident}/proxy/metrics")
    assert response.status_code == 400
    assert response.json()["message"] == f"invalid pod request {ident!r}"


async def test_an_injected_refusal(api: MemApi, client: AsyncClient) -> None:
    """RBAC without ``pods/proxy``: the operator must tell a 403 from an unreachable pod."""
    api.seed(pod())
    api.set_metrics(NS, "cnn-0", PORT, "neuron_runtime_requests_in_flight 1\n")
    forbidden = 'pods "cnn-0" is forbidden: cannot get resource "pods/proxy"'
    api.inject("proxy", "Pod", code=403, reason="Forbidden", message=forbidden, name="cnn-0", subresource="proxy")
    first = await get(client, proxy_path())
    assert (first.status_code, first.json()["reason"]) == (403, "Forbidden")
    assert (await get(client, proxy_path())).status_code == 200  # times=1
