"""Why a pod cannot start: ``resources.podstate`` read against pods and Events as the apiserver returns them.

Every object below has the shape of a real core/v1 Pod (``status.conditions``, ``status.containerStatuses``
with ``state`` / ``lastState``) or core/v1 Event (kubelet's recorder: ``lastTimestamp`` set, ``eventTime``
null), with the messages the scheduler, the kubelet and containerd actually write. Pure: no cluster.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any

import pytest

from neuron_operator.api import Reason
from neuron_operator.resources.podstate import MESSAGE_LIMIT, PodProblem, clip, pod_problem, waits_for_mount

Obj = dict[str, Any]

POD = "bert-7d9c8b6f5-x2x4q"
CONTAINER = "runtime"
IMAGE = "registry.test/neuron-runtime-neuronx:1.0.0"
UID = "3f1c2b9e-7a55-4c1e-9d0b-2f6a1c9e8b7d"
T0 = "2025-03-01T12:00:00Z"

UNSCHEDULABLE_MESSAGE = (
    "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint "
    "{node-role.kubernetes.io/control-plane: }. preemption: 0/2 nodes are available: "
    "1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
)
PULL_MESSAGE = (
    'rpc error: code = NotFound desc = failed to pull and unpack image "registry.test/neuron-runtime-neuronx:1.0.0": '
    'failed to resolve reference "registry.test/neuron-runtime-neuronx:1.0.0": '
    "registry.test/neuron-runtime-neuronx:1.0.0: not found"
)
BACKOFF_PULL_MESSAGE = f'Back-off pulling image "{IMAGE}"'
CRASH_BACKOFF_MESSAGE = f"back-off 40s restarting failed container={CONTAINER} pod={POD}_ml({UID})"


# ------------------------------------------------------------------------------------------------ builders


def condition(type_: str, status: str, reason: str | None = None, message: str | None = None) -> Obj:
    cond: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": T0}
    if reason is not None:
        cond["reason"] = reason
    if message is not None:
        cond["message"] = message
    return cond


def scheduled_conditions(ready: bool = False) -> list[Obj]:
    flag = "True" if ready else "False"
    not_ready = None if ready else "ContainersNotReady"
    not_ready_message = None if ready else f"containers with unready status: [{CONTAINER}]"
    return [
        condition("PodReadyToStartContainers", "True"),
        condition("Initialized", "True"),
        condition("Ready", flag, not_ready, not_ready_message),
        condition("ContainersReady", flag, not_ready, not_ready_message),
        condition("PodScheduled", "True"),
    ]


def container_status(
    state: Obj,
    last_state: Obj | None = None,
    *,
    name: str = CONTAINER,
    ready: bool = False,
    restarts: int = 0,
) -> Obj:
    status: Obj = {
        "name": name,
        "image": IMAGE,
        "imageID": "",
        "ready": ready,
        "restartCount": restarts,
        "started": "running" in state,
        "state": state,
        "lastState": last_state if last_state is not None else {},
    }
    if "waiting" not in state:
        status["containerID"] = "containerd://" + "ab" * 32
        status["imageID"] = IMAGE.rsplit(":", maxsplit=1)[0] + "@sha256:" + "cd" * 32
    return status


def waiting(reason: str, message: str | None = None) -> Obj:
    body: Obj = {"reason": reason}
    if message is not None:
        body["message"] = message
    return {"waiting": body}


def terminated(exit_code: int, reason: str, message: str | None = None) -> Obj:
    body: Obj = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": "2025-03-01T11:59:30Z",
        "finishedAt": "2025-03-01T11:59:58Z",
        "containerID": "containerd://" + "ef" * 32,
    }
    if message is not None:
        body["message"] = message
    return {"terminated": body}


def running() -> Obj:
    return {"running": {"startedAt": "2025-03-01T11:59:59Z"}}


def pod(
    phase: str = "Pending",
    conditions: list[Obj] | None = None,
    statuses: list[Obj] | None = None,
    *,
    name: str = POD,
    node: str | None = "ip-10-0-3-17",
    deleting: bool = False,
) -> Obj:
    """A core/v1 Pod as ``GET /api/v1/namespaces/ml/pods/<name>`` returns it."""
    metadata: Obj = {
        "name": name,
        "generateName": name.rsplit("-", 1)[0] + "-",
        "namespace": "ml",
        "uid": UID,
        "resourceVersion": "81723",
        "creationTimestamp": "2025-03-01T11:58:00Z",
        "labels": {"app.kubernetes.io/name": "neuron-runtime", "pod-template-hash": "7d9c8b6f5"},
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T12:05:00Z"
        metadata["deletionGracePeriodSeconds"] = 75
    status: Obj = {"phase": phase, "qosClass": "Burstable"}
    if conditions is not None:
        status["conditions"] = conditions
    if statuses is not None:
        status["hostIP"] = "10.0.3.17"
        status["podIP"] = "10.244.1.9" if phase == "Running" else None
        status["startTime"] = "2025-03-01T11:58:01Z"
        status["containerStatuses"] = statuses
    spec: Obj = {"containers": [{"name": CONTAINER, "image": IMAGE}], "schedulerName": "default-scheduler"}
    if node is not None:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def unschedulable_pod(message: str | None = UNSCHEDULABLE_MESSAGE) -> Obj:
    return pod(conditions=[condition("PodScheduled", "False", "Unschedulable", message)], node=None)


def waiting_pod(reason: str, message: str | None = None, last_state: Obj | None = None) -> Obj:
    restarts = 3 if last_state else 0
    return pod(
        conditions=scheduled_conditions(),
        statuses=[container_status(waiting(reason, message), last_state, restarts=restarts)],
    )


def running_pod(last_state: Obj | None = None) -> Obj:
    return pod(
        "Running",
        scheduled_conditions(ready=True),
        [container_status(running(), last_state, ready=True, restarts=1 if last_state else 0)],
    )


def event(
    reason: str,
    message: str,
    *,
    type_: str = "Warning",
    last: str | None = T0,
    event_time: str | None = None,
    count: int = 1,
) -> Obj:
    """A core/v1 Event about the pod, as kubelet's recorder writes it."""
    suffix = zlib.crc32(f"{reason}/{message}/{last}".encode())
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{POD}.{suffix:08x}", "namespace": "ml"},
        "involvedObject": {"kind": "Pod", "namespace": "ml", "name": POD, "uid": UID, "apiVersion": "v1"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": "ip-10-0-3-17"},
        "firstTimestamp": last,
        "lastTimestamp": last,
        "eventTime": event_time,
        "count": count,
        "type": type_,
        "reportingComponent": "kubelet",
        "reportingInstance": "ip-10-0-3-17",
    }


def mount_event(volume: str, cause: str, last: str | None = T0, **kwargs: Any) -> Obj:
    return event("FailedMount", f'MountVolume.SetUp failed for volume "{volume}" : {cause}', last=last, **kwargs)


def problem(body: Obj, events: list[Obj] | None = None) -> PodProblem:
    found = pod_problem(body, CONTAINER, events)
    assert found is not None, "expected a problem"
    assert found.pod == POD
    return found


# ------------------------------------------------------------------------------------------------ clip


def test_clip_keeps_short_text_and_strips_it() -> None:
    assert clip('  configmap "y" not found \t') == 'configmap "y" not found'
    assert clip("a" * MESSAGE_LIMIT) == "a" * MESSAGE_LIMIT


def test_clip_keeps_the_head_of_long_text_and_marks_the_cut() -> None:
    text = "HEAD " + "x" * 3000 + " TAIL"
    out = clip(text)
    assert len(out) == MESSAGE_LIMIT
    assert out.startswith("HEAD xxx")
    assert out.endswith("…")
    assert "TAIL" not in out
    assert out[:-1] == text[: MESSAGE_LIMIT - 1]


def test_clip_honours_a_custom_limit() -> None:
    assert clip("abcdefghij", 5) == "abcd…"
    assert clip("abcde", 5) == "abcde"
    assert len(clip("word " * 100, 40)) == 40


def test_clip_collapses_multi_line_text() -> None:
    text = 'Traceback (most recent call last):\n  File "x.py", line 1\r\n\tValueError:   bad\n\n'
    assert clip(text) == 'Traceback (most recent call last): File "x.py", line 1 ValueError: bad'
    assert "\n" not in clip("a\n" * 2000)
    assert len(clip("a\n" * 2000)) == MESSAGE_LIMIT


def test_clip_of_empty_text() -> None:
    assert clip("") == ""
    assert clip("\n \n") == ""


# ------------------------------------------------------------------------------------------- unschedulable


def test_unschedulable_pod_reports_the_scheduler_message() -> None:
    found = problem(unschedulable_pod())
    assert found == PodProblem(Reason.UNSCHEDULABLE, f"pod {POD}: {UNSCHEDULABLE_MESSAGE}", POD)


def test_unschedulable_without_a_message_gets_a_default() -> None:
    found = problem(unschedulable_pod(message=None))
    assert found.reason == Reason.UNSCHEDULABLE
    assert found.message == f"pod {POD}: the scheduler found no node for the pod"


def test_unschedulable_message_on_a_big_cluster_is_clipped_at_the_head() -> None:
    reasons = ", ".join(f"{i} node(s) didn't match Pod's node affinity/selector" for i in range(1, 200))
    message = f"0/5000 nodes are available: {reasons}. preemption: 0/5000 nodes are available: ..."
    found = problem(unschedulable_pod(message))
    assert len(found.message) == MESSAGE_LIMIT
    assert found.message.startswith(f"pod {POD}: 0/5000 nodes are available: 1 node(s) didn't match")
    assert found.message.endswith("…")


def test_unschedulable_wins_over_everything_else() -> None:
    # Not a state a real pod reaches (a pod the scheduler rejects has no container statuses); it pins the order.
    body = unschedulable_pod()
    body["status"]["containerStatuses"] = [
        container_status(waiting("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE), terminated(137, "OOMKilled"))
    ]
    events = [event("FailedScheduling", UNSCHEDULABLE_MESSAGE), mount_event("x", 'configmap "y" not found')]
    assert problem(body, events).reason == Reason.UNSCHEDULABLE


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("True", None),  # scheduled
        ("False", "SchedulingGated"),  # held by scheduling gates: not the scheduler's refusal
    ],
)
def test_pod_scheduled_conditions_other_than_unschedulable(status: str, reason: str | None) -> None:
    message = "Scheduling is blocked due to non-empty scheduling gates" if reason else None
    body = pod(
        conditions=[condition("PodScheduled", status, reason, message)],
        node="ip-10-0-3-17" if status == "True" else None,
    )
    assert pod_problem(body, CONTAINER) is None


def test_pending_pod_not_yet_scheduled_has_no_problem() -> None:
    body = pod(node=None)  # just created: phase Pending, no conditions yet
    assert "conditions" not in body["status"]
    assert pod_problem(body, CONTAINER) is None
    assert pod_problem(body, CONTAINER, []) is None
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": "ml"}, "spec": {}}
    assert pod_problem(body, CONTAINER) is None  # no status at all


# ---------------------------------------------------------------------------------------------- image pull


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImagePull", PULL_MESSAGE),
        ("ImagePullBackOff", BACKOFF_PULL_MESSAGE),
        ("InvalidImageName", 'Failed to apply default image tag "Registry.test/x:1": couldn\'t parse image name'),
        ("ErrImageNeverPull", f'Container image "{IMAGE}" is not present with pull policy of Never'),
    ],
)
def test_image_pull_failures(reason: str, message: str) -> None:
    found = problem(waiting_pod(reason, message))
    assert found == PodProblem(Reason.IMAGE_PULL_FAILED, f"pod {POD}: {reason} {IMAGE}: {message}", POD)


def test_image_pull_failure_without_a_message_repeats_the_reason() -> None:
    found = problem(waiting_pod("ImagePullBackOff"))
    assert found.message == f"pod {POD}: ImagePullBackOff {IMAGE}: ImagePullBackOff"


def test_image_pull_wins_over_an_earlier_oom_kill() -> None:
    body = waiting_pod("ErrImagePull", PULL_MESSAGE, terminated(137, "OOMKilled"))
    assert problem(body).reason == Reason.IMAGE_PULL_FAILED


# -------------------------------------------------------------------------------------------- start errors


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("CreateContainerConfigError", 'configmap "runtime-config" not found'),
        ("CreateContainerConfigError", f'container has runAsNonRoot and image will run as root (pod: "{POD}_ml'),
        ("CreateContainerError", 'failed to reserve container name "runtime_bert": name is reserved'),
        ("RunContainerError", 'exec: "neuron-runtime": executable file not found in $PATH: unknown'),
        ("PreCreateHookError", "hook failed"),
    ],
)
def test_container_start_failures(reason: str, message: str) -> None:
    found = problem(waiting_pod(reason, message))
    assert found == PodProblem(Reason.CONTAINER_START_FAILED, f"pod {POD}: {reason}: {message}", POD)


def test_start_error_wins_over_an_earlier_oom_kill() -> None:
    body = waiting_pod("CreateContainerConfigError", 'secret "token" not found', terminated(137, "OOMKilled"))
    assert problem(body).reason == Reason.CONTAINER_START_FAILED


# ------------------------------------------------------------------------------------- OOM and crash loops

OOM_MESSAGE = f"pod {POD}: container {CONTAINER} was killed for exceeding its memory limit (OOMKilled)"


def test_oom_killed_in_last_state_of_a_crash_loop() -> None:
    body = waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(137, "OOMKilled"))
    assert problem(body) == PodProblem(Reason.OOM_KILLED, OOM_MESSAGE, POD)


def test_oom_killed_in_the_current_state() -> None:
    # A compile pod (restartPolicy Never) stays terminated: the OOM kill is in state, not lastState.
    body = pod("Failed", scheduled_conditions(), [container_status(terminated(137, "OOMKilled"))])
    assert problem(body) == PodProblem(Reason.OOM_KILLED, OOM_MESSAGE, POD)


def test_oom_killed_while_restarting() -> None:
    # The kubelet is creating the next container: lastState still says why the previous one died.
    body = waiting_pod("ContainerCreating", None, terminated(137, "OOMKilled"))
    assert problem(body).reason == Reason.OOM_KILLED


def test_crash_loop_names_the_last_exit_code_and_message() -> None:
    body = waiting_pod(
        "CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(3, "Error", "artifact sha256 mismatch: expected ab")
    )
    found = problem(body)
    assert found == PodProblem(
        Reason.CRASH_LOOP_BACK_OFF,
        f"pod {POD}: container {CONTAINER} keeps exiting (last exit code 3): artifact sha256 mismatch: expected ab",
        POD,
    )


def test_crash_loop_without_a_termination_message_uses_the_terminated_reason() -> None:
    body = waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(139, "Error"))
    assert problem(body).message == f"pod {POD}: container {CONTAINER} keeps exiting (last exit code 139): Error"


def test_crash_loop_keeps_the_head_of_a_long_multi_line_message() -> None:
    trace = "RuntimeError: NEFF load failed\n" + "".join(f'  File "/app/m{i}.py", line {i}\n' for i in range(400))
    body = waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(1, "Error", trace))
    found = problem(body)
    assert found.reason == Reason.CRASH_LOOP_BACK_OFF
    assert found.message.startswith(
        f"pod {POD}: container {CONTAINER} keeps exiting (last exit code 1): RuntimeError: NEFF load failed "
        'File "/app/m0.py", line 0 File'
    )
    assert "\n" not in found.message
    assert len(found.message) == MESSAGE_LIMIT
    assert found.message.endswith("…")


def test_crash_loop_of_another_container_is_not_ours() -> None:
    body = running_pod()
    body["status"]["containerStatuses"].append(
        container_status(
            waiting("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE), terminated(137, "OOMKilled"), name="sidecar"
        )
    )
    assert pod_problem(body, CONTAINER) is None
    assert pod_problem(body, "sidecar") is not None


def test_a_container_that_exited_with_an_error_but_is_not_looping_is_no_problem_here() -> None:
    # A compile pod that failed: job_outcome reads its termination message, pod_problem has nothing to add.
    body = pod("Failed", scheduled_conditions(), [container_status(terminated(3, "Error", '{"status":"Failed"}'))])
    assert pod_problem(body, CONTAINER) is None


# ----------------------------------------------------------------------------------------------- FailedMount


def mounting_pod() -> Obj:
    return waiting_pod("ContainerCreating")


def test_failed_mount_is_read_from_the_newest_event() -> None:
    older = mount_event("artifacts", 'persistentvolumeclaim "artifacts" not found', last="2025-03-01T11:58:05Z")
    newest = mount_event("config", 'configmap "runtime-config" not found', last="2025-03-01T12:02:10Z", count=7)
    middle = mount_event("scratch", "timed out waiting for the condition", last="2025-03-01T12:01:00Z")
    events = [
        older,
        event("Scheduled", f"Successfully assigned ml/{POD} to ip-10-0-3-17", type_="Normal"),
        newest,
        middle,
    ]
    found = problem(mounting_pod(), events)
    assert found == PodProblem(Reason.VOLUME_MOUNT_FAILED, f"pod {POD}: {newest['message']}", POD)


def test_failed_mount_with_event_time_only() -> None:
    # Events written through events.k8s.io carry eventTime and a null lastTimestamp.
    old = mount_event("a", 'configmap "a" not found', last="2025-03-01T12:00:01Z")
    new = mount_event("b", 'secret "b" not found', last=None, event_time="2025-03-01T12:00:09.123456Z")
    assert problem(mounting_pod(), [old, new]).message == f"pod {POD}: {new['message']}"
    assert problem(mounting_pod(), [new, old]).message == f"pod {POD}: {new['message']}"


def test_failed_mount_when_the_pod_has_no_container_status_yet() -> None:
    body = pod(conditions=scheduled_conditions())  # scheduled, kubelet has not reported containers
    events = [mount_event("artifacts", 'persistentvolumeclaim "team-artifacts" not found')]
    assert problem(body, events).reason == Reason.VOLUME_MOUNT_FAILED


def test_failed_mount_message_is_collapsed_and_clipped() -> None:
    cause = "mount failed: exit status 32\nMounting command: mount\nOutput: " + "e" * 3000
    found = problem(mounting_pod(), [mount_event("artifacts", cause)])
    assert found.message.startswith(
        f'pod {POD}: MountVolume.SetUp failed for volume "artifacts" : mount failed: exit status 32 Mounting command:'
    )
    assert "\n" not in found.message
    assert len(found.message) == MESSAGE_LIMIT


@pytest.mark.parametrize(
    "events",
    [
        None,
        [],
        [event("Scheduled", f"Successfully assigned ml/{POD} to ip-10-0-3-17", type_="Normal")],
        [event("Pulling", f'Pulling image "{IMAGE}"', type_="Normal")],
        [event("FailedMount", "MountVolume.SetUp succeeded", type_="Normal")],  # only Warnings count
        [event("FailedScheduling", UNSCHEDULABLE_MESSAGE)],
    ],
)
def test_container_creating_without_a_mount_warning_is_no_problem(events: list[Obj] | None) -> None:
    assert pod_problem(mounting_pod(), CONTAINER, events) is None


def test_mount_events_are_ignored_once_the_container_runs() -> None:
    events = [mount_event("artifacts", 'configmap "y" not found')]
    assert pod_problem(running_pod(), CONTAINER, events) is None
    crash = waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(1, "Error", "boom"))
    assert problem(crash, events).reason == Reason.CRASH_LOOP_BACK_OFF


# -------------------------------------------------------------------------------------- healthy / terminating


def test_healthy_running_pod_has_no_problem() -> None:
    assert pod_problem(running_pod(), CONTAINER) is None
    assert (
        pod_problem(running_pod(), CONTAINER, [event("Started", "Started container runtime", type_="Normal")]) is None
    )


def test_running_pod_after_a_crash_has_no_problem() -> None:
    assert pod_problem(running_pod(terminated(1, "Error", "boom")), CONTAINER) is None


def test_running_ready_pod_with_an_old_oom_kill_has_no_problem() -> None:
    assert pod_problem(running_pod(terminated(137, "OOMKilled")), CONTAINER) is None


@pytest.mark.parametrize(
    "body",
    [
        unschedulable_pod(),
        waiting_pod("ImagePullBackOff", BACKOFF_PULL_MESSAGE),
        waiting_pod("CreateContainerConfigError", 'secret "token" not found'),
        waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(137, "OOMKilled")),
        waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(1, "Error", "boom")),
        mounting_pod(),
    ],
    ids=["unschedulable", "image-pull", "config", "oom", "crash-loop", "mount"],
)
def test_terminating_pod_has_no_problem(body: Obj) -> None:
    assert pod_problem(body, CONTAINER, [mount_event("x", 'configmap "y" not found')]) is not None
    deleting = copy.deepcopy(body)
    deleting["metadata"]["deletionTimestamp"] = "2025-03-01T12:05:00Z"
    deleting["metadata"]["deletionGracePeriodSeconds"] = 75
    assert pod_problem(deleting, CONTAINER, [mount_event("x", 'configmap "y" not found')]) is None


def test_pod_problem_leaves_its_inputs_alone() -> None:
    body = waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(1, "Error", "boom\n" * 500))
    events = [mount_event("x", 'configmap "y" not found')]
    before = copy.deepcopy((body, events))
    assert pod_problem(body, CONTAINER, events) == pod_problem(body, CONTAINER, events)
    assert (body, events) == before


# ---------------------------------------------------------------------------------------------- waits_for_mount


def test_waits_for_mount_when_scheduled_and_container_creating() -> None:
    assert waits_for_mount(mounting_pod(), CONTAINER)


def test_waits_for_mount_when_scheduled_without_container_status() -> None:
    assert waits_for_mount(pod(conditions=scheduled_conditions()), CONTAINER)


@pytest.mark.parametrize(
    "body",
    [
        pod(node=None),  # not scheduled yet, no conditions
        unschedulable_pod(),
        running_pod(),
        waiting_pod("ImagePullBackOff", BACKOFF_PULL_MESSAGE),
        waiting_pod("CrashLoopBackOff", CRASH_BACKOFF_MESSAGE, terminated(1, "Error")),
        waiting_pod("PodInitializing"),
    ],
    ids=["new", "unschedulable", "running", "image-pull", "crash-loop", "initializing"],
)
def test_does_not_wait_for_mount(body: Obj) -> None:
    assert not waits_for_mount(body, CONTAINER)


def test_waits_for_mount_reads_the_named_container() -> None:
    body = pod(
        conditions=scheduled_conditions(),
        statuses=[container_status(running(), name="sidecar", ready=True)],
    )
    assert waits_for_mount(body, CONTAINER)  # ours has no status yet
    assert not waits_for_mount(body, "sidecar")


def test_an_unschedulable_pod_is_a_problem_only_after_the_grace() -> None:
    """A surge pod waiting for the cores of a terminating pod, or for a node an autoscaler adds, is not Stalled."""
    from datetime import UTC, datetime, timedelta

    from neuron_operator.resources.podstate import UNSCHEDULABLE_GRACE_SECONDS

    since = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)  # T0, the condition's lastTransitionTime
    p = unschedulable_pod()
    assert pod_problem(p, "runtime", now=since + timedelta(seconds=UNSCHEDULABLE_GRACE_SECONDS - 1)) is None
    late = pod_problem(p, "runtime", now=since + timedelta(seconds=UNSCHEDULABLE_GRACE_SECONDS))
    assert late is not None
    assert late.reason == "Unschedulable"
