"""Probe handlers of the local exec node: httpGet and tcpSocket from the host to the pod IP, exec inside the
container's namespaces (through ``launch.py``), plus the per-probe threshold bookkeeping (the pure
``ProbeState``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = Mapping[str, Any]


def resolve_port(port: int | str, container: Obj) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"containers[{container.get('name')}]: no port named {port!r}")


async def http_get(
    host: str,
    port: int,
    path: str = "/",
    *,
    scheme: str = "HTTP",
    headers: list[Obj] | None = None,
    timeout: float = 1,  # noqa: ASYNC109 - the probe's timeoutSeconds
) -> tuple[bool, str]:
    """kubelet semantics: success on 200 <= status < 400 (redirects are not followed)."""
    ctx = None
    if scheme.upper() == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def go() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            hdrs = {
                "Host": f"{host}:{port}",
                "User-Agent": "kube-probe/1.34",
                "Accept": "*/*",
                "Connection": "close",
            }
            hdrs.update({h["name"]: h["value"] for h in (headers or [])})
            req = f"GET {path or '/'} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            writer.write(req.encode())
            await writer.drain()
            line = (await reader.readline()).decode("latin-1").split()
            code = int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(go(), timeout)
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        return False, f'Get "{scheme.lower()}://{host}:{port}{path}": {exc or type(exc).__name__}'


async def tcp_socket(host: str, port: int, timeout: float = 1) -> tuple[bool, str]:  # noqa: ASYNC109
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError) as exc:
        return False, f"dial tcp {host}:{port}: {exc or 'timeout'}"
    writer.close()
    return True, ""


@dataclass
class ProbeState:
    """Success/failure thresholds of one probe (kubelet: results flip only after N consecutive outcomes)."""

    success_threshold: int = 1
    failure_threshold: int = 3
    result: bool | None = None  # None = not yet decided
    _streak: int = 0
    _last: bool | None = None

    @classmethod
    def of(cls, probe: Obj, initial: bool | None = None) -> ProbeState:
        return cls(int(probe.get("successThreshold", 1)), int(probe.get("failureThreshold", 3)), initial)

    def observe(self, ok: bool) -> bool:
        """Record one outcome; return True if ``result`` changed."""
        self._streak = self._streak + 1 if ok == self._last else 1
        self._last = ok
        threshold = self.success_threshold if ok else self.failure_threshold
        if self._streak >= threshold and self.result != ok:
            self.result = ok
            return True
        return False


ExecRunner = Callable[[list[str], float], Awaitable[tuple[bool, str]]]


async def run_probe(probe: Obj, container: Obj, pod_ip: str, exec_runner: ExecRunner) -> tuple[bool, str]:
    """One attempt of ``probe`` (a Probe or lifecycle handler object) against the container."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        h = probe["httpGet"]
        return await http_get(
            h.get("host") or pod_ip,
            resolve_port(h["port"], container),
            h.get("path", "/"),
            scheme=h.get("scheme", "HTTP"),
            headers=h.get("httpHeaders"),
            timeout=timeout,
        )
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        return await tcp_socket(t.get("host") or pod_ip, resolve_port(t["port"], container), timeout)
    if "exec" in probe:
        return await exec_runner(list(probe["exec"].get("command") or []), timeout)
    if "sleep" in probe:
        await asyncio.sleep(float(probe["sleep"].get("seconds", 0)))
        return True, ""
    return (
        False,
        f"unsupported probe handler {sorted(k for k in probe if not k.endswith(('Seconds', 'Threshold')))}",
    )
