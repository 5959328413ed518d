"""One pod on the local exec node: sandbox (netns, IP, cores, volumes), containers as host processes,
probes, restarts with back-off, status reporting and graceful deletion — the kubelet's pod worker, small.

``PodWorker`` is driven by the agent: ``start()`` once, ``update(pod)`` on every watch event, ``killed()``
when the object vanished. Status goes to the ``pods/status`` subresource as a strategic-merge patch, and
only when the computed status differs from the last one written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightkube import ApiError
from lightkube.resources.core_v1 import Pod, PodStatus
from lightkube.types import PatchType

from localcluster.execnode import env as envmod
from localcluster.execnode import probes, volumes
from localcluster.execnode.cores import format_range, requested_cores

if TYPE_CHECKING:
    from localcluster.execnode.agent import Agent

log = logging.getLogger("execnode.pods")
LAUNCH = Path(__file__).with_name("launch.py")
MAX_MESSAGE = 4096
BACKOFF_MAX = 300.0


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: dict[str, Any]) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}_{m['name']}_{m['uid']}"


@dataclass
class Ctr:
    """Runtime state of one container (init or app)."""

    spec: dict[str, Any]
    init: bool
    restart_count: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: bool | None = None  # startup probe passed (None: no startup probe and not running)
    final: bool = False  # terminated and will not be restarted
    container_id: str = ""
    env: dict[str, str] = field(default_factory=dict)
    kill_reason: str = ""  # why we killed it (liveness/startup failure)

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class PodWorker:
    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = agent.state_dir / "pods" / pod_key(pod)
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.host_network = bool(spec.get("hostNetwork"))
        self.inits = [Ctr(c, True) for c in spec.get("initContainers") or []]
        self.apps = [Ctr(c, False) for c in spec.get("containers") or []]
        self.pod_ip: str | None = None
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self.phase = "Pending"
        self.initialized = not self.inits
        self.vols: volumes.PodVolumes | None = None
        self.conds: dict[str, tuple[str, str, str]] = {}  # type -> (status, lastTransitionTime, reason)
        self.stopping = asyncio.Event()
        self.terminal = asyncio.Event()
        self.dirty = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.last_status: dict[str, Any] | None = None
        self.gone = False
        self.sandbox_error = ""
        self._released = False
        self._setup_done = asyncio.Event()  # the sandbox step finished (or gave up): safe to tear down
        self._deleting = False
        self._adopt_previous(pod.get("status") or {})

    # ------------------------------------------------------------------ driver interface
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tasks.append(asyncio.create_task(self._publisher(), name=f"status {self.name}"))
        self.tasks.append(asyncio.create_task(self._guard(self._run()), name=f"pod {self.name}"))
        self.dirty.set()
        if self.pod["metadata"].get("deletionTimestamp"):
            self.update(self.pod)

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = {
            **pod,
            "status": {**(pod.get("status") or {}), "podIP": self.pod_ip, "hostIP": self.agent.host_ip},
        }
        if pod["metadata"].get("deletionTimestamp") and not self._deleting:
            self._deleting = True
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            self.tasks.append(asyncio.create_task(self._guard(self._delete(float(grace))), name=f"delete {self.name}"))

    async def killed(self) -> None:
        """The object is gone (force-deleted): stop at once, no grace."""
        self.gone = True
        await self._stop_containers(0)
        await self._release()
        await self._finish()

    async def shutdown(self, grace: float) -> None:
        """The agent is stopping: stop containers within ``grace`` but leave the API object alone."""
        self.gone = True
        await self._stop_containers(grace)
        await self._release(keep_allocations=True)
        await self._finish()

    # ------------------------------------------------------------------ helpers
    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # one pod's bug never takes the agent down
            log.exception("pod %s/%s: worker failed", self.ns, self.name)

    async def _finish(self) -> None:
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        for t in self.tasks:
            if t is not current:
                with contextlib.suppress(BaseException):
                    await t
        self.agent.forget(self.uid)

    def _changed(self) -> None:
        self.dirty.set()

    def _adopt_previous(self, status: dict[str, Any]) -> None:
        """After an agent restart: keep restart counts; a container that had started counts as restarted."""
        prev = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        for c in [*self.inits, *self.apps]:
            s = prev.get(c.name)
            if not s:
                continue
            c.restart_count = int(s.get("restartCount", 0))
            state = s.get("state") or {}
            if "terminated" in state:
                c.last_state = {"terminated": state["terminated"]}
                if c.init and state["terminated"].get("exitCode") == 0:
                    c.state, c.final = dict(state), True
            elif "running" in state:
                c.last_state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "Error",
                        "message": "the exec node restarted; the container process was lost",
                        "startedAt": state["running"].get("startedAt"),
                        "finishedAt": now_iso(),
                    }
                }
                if self.restart_policy == "Never":
                    c.state, c.final = dict(c.last_state), True
                else:
                    c.restart_count += 1
        if self.inits and all(c.final for c in self.inits):
            self.initialized = True

    # ------------------------------------------------------------------ lifecycle
    async def _run(self) -> None:
        try:
            await self._setup_sandbox()
        finally:
            self._setup_done.set()
        if self.stopping.is_set():
            return
        if not self.initialized:
            for c in self.inits:
                if c.final:
                    continue
                await self._supervise(c)
                if self.stopping.is_set():
                    return
                if c.state.get("terminated", {}).get("exitCode") != 0:
                    self._set_terminal("Failed")
                    return
            self.initialized = True
            self._changed()
        runners = [asyncio.create_task(self._guard(self._supervise(c))) for c in self.apps if not c.final]
        self.tasks.extend(runners)
        if runners:
            await asyncio.wait(runners)
        if self.stopping.is_set():
            return
        failed = any(c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in self.apps)
        self._set_terminal("Failed" if failed else "Succeeded")

    def _set_terminal(self, phase: str) -> None:
        self.phase = phase
        self.terminal.set()
        self._changed()
        self.tasks.append(asyncio.create_task(self._guard(self._release())))

    async def _setup_sandbox(self) -> None:
        """IP + netns, cores, volumes; retried with back-off until it works (e.g. a ConfigMap appears)."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self._try_setup()
                self.sandbox_error = ""
                self.start_time = self.start_time or now_iso()
                self._changed()
                return
            except Exception as exc:
                msg = str(exc)
                if isinstance(exc, ApiError):
                    msg = f"API: {exc.status.code} {exc.status.message}"
                if msg != self.sandbox_error:
                    log.warning("pod %s/%s: sandbox not ready: %s", self.ns, self.name, msg)
                self.sandbox_error = msg
                self._changed()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            delay = min(delay * 2, 10)

    async def _try_setup(self) -> None:
        a = self.agent
        if self.pod_ip is None:
            if self.host_network:
                self.pod_ip = a.host_ip
            else:
                ip = a.ipam.allocate(self.uid)
                a.persist()
                await asyncio.to_thread(a.net.add_pod, self.uid, ip)
                self.pod_ip = ip
            self.pod["status"] = {**(self.pod.get("status") or {}), "podIP": self.pod_ip, "hostIP": a.host_ip}
            self.start_time = self.start_time or now_iso()
            self._changed()
        for c in [*self.inits, *self.apps]:
            count, align = requested_cores(c.spec)
            if count:
                a.cores.allocate(f"{self.uid}/{c.name}", count, align)
        a.persist()
        if self.vols is None:
            self.vols = await volumes.prepare(self.pod, self.dir, a.state_dir / "pvc", a.fetcher, a.node_allocatable)
            if self.vols.tokens:
                self.tasks.append(asyncio.create_task(self._guard(self._refresh_tokens())))

    async def _refresh_tokens(self) -> None:
        assert self.vols is not None
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        while not self.terminal.is_set():
            nxt = min(t.refresh_at for t in self.vols.tokens)
            await asyncio.sleep(max(nxt - time.time(), 1))
            for t in self.vols.tokens:
                if t.refresh_at <= time.time():
                    try:
                        await volumes.refresh_token(t, self.pod, sa, self.agent.fetcher)
                    except Exception as exc:
                        log.warning("pod %s/%s: token refresh failed: %s", self.ns, self.name, exc)
                        t.refresh_at = time.time() + 10

    # ------------------------------------------------------------------ containers
    async def _build_env(self, c: Ctr) -> dict[str, str]:
        a = self.agent
        cms, secrets = envmod.referenced_objects({"spec": {"containers": [c.spec]}})
        cm_objs = {n: await a.fetcher.configmap(self.ns, n) for n in cms}
        sec_objs = {n: await a.fetcher.secret(self.ns, n) for n in secrets}
        base = {**a.base_env, "HOSTNAME": self.name}
        env = envmod.container_env(
            self.pod,
            c.spec,
            configmaps=cm_objs,
            secrets=sec_objs,
            base=base,
            service_env=a.service_env,
            node_allocatable=a.node_allocatable,
        )
        alloc = a.cores.get(f"{self.uid}/{c.name}")
        if alloc:
            env["NEURON_RT_VISIBLE_CORES"] = format_range(*alloc)
        return env

    def _ctr_dir(self, c: Ctr) -> Path:
        d = self.dir / "containers" / c.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    async def _launch(self, c: Ctr) -> asyncio.subprocess.Process | str:
        """Start the container process; return it, or an error message (StartError / config error)."""
        try:
            env = await self._build_env(c)
            argv = envmod.command_line(c.spec, env)
            assert self.vols is not None
            d = self._ctr_dir(c)
            term = d / "termination-log"
            term.write_bytes(b"")
            mounts = volumes.mounts_for(c.spec, self.vols, env, term)
        except (envmod.EnvError, volumes.VolumeError, ApiError, OSError) as exc:
            return f"CreateContainerConfigError: {exc}"
        c.env = env
        (d / "start-error").unlink(missing_ok=True)
        spec = {
            "netns": None if self.host_network else str(self.agent.net.netns_path(self.uid)),
            "mounts": mounts,
            "argv": argv,
            "env": env,
            "cwd": c.spec.get("workingDir") or "/",
            "start_error_file": str(d / "start-error"),
            "created_paths_file": str(self.agent.created_paths),
        }
        (d / "launch.json").write_text(json.dumps(spec))
        logf = open(self.dir / f"{c.name}.log", "ab")  # noqa: SIM115, ASYNC230 - a local file, handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                self.agent.python,
                "-I",
                "-S",
                str(LAUNCH),
                str(d / "launch.json"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            logf.close()
        (d / "pid").write_text(str(proc.pid))
        return proc

    async def _supervise(self, c: Ctr) -> None:
        """Run ``c`` until it is final (per restart policy) or the pod stops; back off between restarts."""
        backoff, restarts = self.agent.backoff_base, 0
        policy = "OnFailure" if c.init and self.restart_policy == "Always" else self.restart_policy
        while not self.stopping.is_set():
            started_at = now_iso()
            t0 = time.monotonic()
            result = await self._launch(c)
            if isinstance(result, str):  # CreateContainerConfigError: retried with back-off
                reason, _, message = result.partition(": ")
                c.state = {"waiting": {"reason": reason, "message": message}}
                self._changed()
                if await self._sleep_or_stop(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            proc = result
            c.proc = proc
            c.container_id = f"execnode://{self.uid[:8]}-{c.name}-{proc.pid}"
            c.state = {"running": {"startedAt": started_at}}
            c.kill_reason = ""
            c.started = None if c.spec.get("startupProbe") else True
            c.ready = not c.init and not c.spec.get("readinessProbe") and c.started is True
            self._changed()
            probe_task = None if c.init else asyncio.create_task(self._guard(self._probe_loop(c, proc)))
            code = await proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the container's other processes go with it
            if probe_task:
                probe_task.cancel()
            c.proc, c.ready, c.started = None, False, False
            c.state = {"terminated": self._terminated(c, code, started_at)}
            self._changed()
            if self.stopping.is_set():
                return
            ok = c.state["terminated"]["exitCode"] == 0
            if policy == "Never" or (policy == "OnFailure" and ok):
                c.final = True
                return
            if time.monotonic() - t0 > 600:
                backoff, restarts = self.agent.backoff_base, 0  # kubelet forgets the back-off after 10 min
            c.last_state = {"terminated": c.state["terminated"]}
            # kubelet restarts the first time at once, then waits base, 2*base, ... up to 5 minutes.
            delay = 0.0 if restarts == 0 else backoff
            if delay:
                message = (
                    f"back-off {delay:.0f}s restarting failed container={c.name} pod={self.name}_{self.ns}({self.uid})"
                )
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                self._changed()
                if await self._sleep_or_stop(delay):
                    c.state = {"terminated": c.last_state["terminated"]}
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
            restarts += 1
            c.restart_count += 1

    async def _sleep_or_stop(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
            return True
        except TimeoutError:
            return False

    def _terminated(self, c: Ctr, code: int, started_at: str) -> dict[str, Any]:
        d = self._ctr_dir(c)
        start_error = d / "start-error"
        if code in (126, 127, 128) and start_error.exists():
            return {
                "exitCode": 128 if code == 128 else code,
                "reason": "StartError",
                "message": start_error.read_text()[:MAX_MESSAGE],
                "startedAt": "1970-01-01T00:00:00Z",
                "finishedAt": now_iso(),
                "containerID": c.container_id,
            }
        exit_code = code if code >= 0 else 128 - code  # killed by signal N -> 128+N, like runc
        try:
            with open(d / "termination-log", "rb") as f:
                message = f.read(MAX_MESSAGE).decode("utf-8", "replace")
        except OSError:
            message = ""
        if not message and exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                tail = (self.dir / f"{c.name}.log").read_bytes()[-2048:]
                message = b"\n".join(tail.splitlines()[-80:]).decode("utf-8", "replace")
            except OSError:
                pass
        out: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now_iso(),
            "containerID": c.container_id,
        }
        if exit_code < 0 or code < 0:
            out["signal"] = -code
        if message:
            out["message"] = message
        return out

    # ------------------------------------------------------------------ probes
    def _exec_runner(self, c: Ctr, proc: asyncio.subprocess.Process) -> probes.ExecRunner:
        async def run(cmd: list[str], timeout: float) -> tuple[bool, str]:  # noqa: ASYNC109 - kubelet's timeoutSeconds
            if not cmd:
                return False, "exec: empty command"
            d = self._ctr_dir(c)
            spec = {"join_pid": proc.pid, "argv": cmd, "env": c.env, "cwd": c.spec.get("workingDir") or "/"}
            path = d / f"exec-{os.getpid()}-{time.monotonic_ns()}.json"
            path.write_text(json.dumps(spec))
            p = await asyncio.create_subprocess_exec(
                self.agent.python,
                "-I",
                "-S",
                str(LAUNCH),
                str(path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                out, _ = await asyncio.wait_for(p.communicate(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
                return False, f"command timed out after {timeout:.0f}s"
            finally:
                path.unlink(missing_ok=True)
            return p.returncode == 0, out.decode("utf-8", "replace")[-1024:]

        return run

    async def _probe_loop(self, c: Ctr, proc: asyncio.subprocess.Process) -> None:
        spec = c.spec
        runner = self._exec_runner(c, proc)
        ip = self.pod_ip or "127.0.0.1"
        t_start = time.monotonic()

        async def loop(kind: str, probe: dict[str, Any]) -> None:
            state = probes.ProbeState.of(probe)
            delay = float(probe.get("initialDelaySeconds", 0))
            period = float(probe.get("periodSeconds", 10))
            await asyncio.sleep(max(0.0, t_start + delay - time.monotonic()))
            while True:
                if kind != "startup" and c.started is not True:
                    await asyncio.sleep(0.1)
                    continue
                ok, msg = await probes.run_probe(probe, spec, ip, runner)
                if state.observe(ok) or state.result is not None:
                    if kind == "readiness" and c.ready != bool(state.result):
                        c.ready = bool(state.result)
                        self._changed()
                    elif kind == "startup" and state.result:
                        c.started = True
                        c.ready = not spec.get("readinessProbe")
                        self._changed()
                        return
                    elif kind in ("startup", "liveness") and state.result is False:
                        log.info("pod %s/%s: %s probe of %s failed: %s", self.ns, self.name, kind, c.name, msg)
                        c.kill_reason = f"{kind} probe failed: {msg}"
                        grace = probe.get(
                            "terminationGracePeriodSeconds",
                            self.pod["spec"].get("terminationGracePeriodSeconds", 30),
                        )
                        await self._kill(proc, float(grace))
                        return
                await asyncio.sleep(period)

        loops = [loop(k, spec[f"{k}Probe"]) for k in ("startup", "readiness", "liveness") if spec.get(f"{k}Probe")]
        if loops:
            await asyncio.gather(*loops)

    # ------------------------------------------------------------------ stopping
    async def _kill(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(grace, 0.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def _stop_containers(self, grace: float) -> None:
        """preStop hooks, then SIGTERM, then SIGKILL once ``grace`` seconds (in total) have passed."""
        self.stopping.set()
        deadline = time.monotonic() + grace
        running = [c for c in [*self.inits, *self.apps] if c.proc is not None and c.proc.returncode is None]

        async def stop(c: Ctr) -> None:
            proc = c.proc
            assert proc is not None
            hook = ((c.spec.get("lifecycle") or {}).get("preStop")) or None
            if hook and grace > 0:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        probes.run_probe(
                            {**hook, "timeoutSeconds": grace},
                            c.spec,
                            self.pod_ip or "",
                            self._exec_runner(c, proc),
                        ),
                        max(deadline - time.monotonic(), 0.1),
                    )
            await self._kill(proc, max(deadline - time.monotonic(), 0.0))

        await asyncio.gather(*(stop(c) for c in running), return_exceptions=True)

    async def _delete(self, grace: float) -> None:
        if not self.terminal.is_set():
            await self._stop_containers(grace)
        await self._release()
        await self._flush_status()
        with contextlib.suppress(ApiError):
            await self.agent.client.delete(Pod, self.name, namespace=self.ns, grace_period=0)
        self.gone = True
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        await self._finish()

    async def _release(self, keep_allocations: bool = False) -> None:
        """Free IP, netns and cores (idempotent)."""
        if self._released:
            return
        self._released = True
        if self.stopping.is_set():  # let a sandbox step in flight finish, so nothing is created after teardown
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._setup_done.wait(), 30)
        for c in [*self.inits, *self.apps]:  # a container launched while we were stopping
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
        a = self.agent
        if not self.host_network:
            ip = a.ipam.get(self.uid)
            await asyncio.to_thread(a.net.remove_pod, self.uid, ip)
        if not keep_allocations:
            a.ipam.release(self.uid)
            a.cores.release_prefix(f"{self.uid}/")
            a.persist()

    # ------------------------------------------------------------------ status
    def _cond(self, ctype: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        prev = self.conds.get(ctype)
        if prev is None or prev[0] != status:
            self.conds[ctype] = (status, now_iso(), reason)
        out = {"type": ctype, "status": status, "lastTransitionTime": self.conds[ctype][1]}
        if reason and not ok:
            out["reason"] = reason
        return out

    def _ctr_status(self, c: Ctr) -> dict[str, Any]:
        state = c.state
        if self.sandbox_error and "waiting" in state:
            state = {"waiting": {"reason": "ContainerCreating", "message": self.sandbox_error}}
        out: dict[str, Any] = {
            "name": c.name,
            "state": state,
            "lastState": c.last_state,
            "ready": c.ready,
            "restartCount": c.restart_count,
            "image": c.spec.get("image", ""),
            "imageID": f"execnode://{c.spec.get('image', '')}",
            "started": "running" in state and c.started is True,
        }
        if c.container_id:
            out["containerID"] = c.container_id
        return out

    def status(self) -> dict[str, Any]:
        apps_ready = all(c.ready for c in self.apps)
        if self.phase in ("Succeeded", "Failed"):
            phase = self.phase
        elif self.initialized and any(
            "running" in c.state or "terminated" in c.state or c.last_state for c in self.apps
        ):
            phase = "Running"
        else:
            phase = "Pending"
        terminal = phase in ("Succeeded", "Failed")
        reason = "PodCompleted" if terminal else ("ContainersNotReady" if not apps_ready else "")
        st: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                self._cond("PodReadyToStartContainers", self.pod_ip is not None and self.vols is not None),
                self._cond(
                    "Initialized",
                    self.initialized,
                    "PodCompleted" if terminal else "ContainersNotInitialized",
                ),
                self._cond("Ready", apps_ready and not terminal, reason),
                self._cond("ContainersReady", apps_ready and not terminal, reason),
            ],
            "hostIP": self.agent.host_ip,
            "hostIPs": [{"ip": self.agent.host_ip}],
            "containerStatuses": [self._ctr_status(c) for c in self.apps],
        }
        if self.inits:
            st["initContainerStatuses"] = [self._ctr_status(c) for c in self.inits]
        if self.pod_ip:
            st["podIP"] = self.pod_ip
            st["podIPs"] = [{"ip": self.pod_ip}]
        if self.start_time:
            st["startTime"] = self.start_time
        return st

    async def _publisher(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            await self._flush_status()

    async def _flush_status(self) -> None:
        if self.gone:
            return
        st = self.status()
        if st == self.last_status:
            return
        try:
            await self.agent.client.patch(
                PodStatus, self.name, {"status": st}, namespace=self.ns, patch_type=PatchType.STRATEGIC
            )
            self.last_status = st
        except ApiError as exc:
            if exc.status.code == 404:
                self.gone = True
                return
            log.warning("pod %s/%s: status patch failed: %s", self.ns, self.name, exc.status.message)
            await asyncio.sleep(1)
            self.dirty.set()
        except Exception as exc:
            log.warning("pod %s/%s: status patch failed: %s", self.ns, self.name, exc)
            await asyncio.sleep(1)
            self.dirty.set()
