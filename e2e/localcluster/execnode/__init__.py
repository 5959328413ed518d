"""The local exec node: a Node that is *not* kwok-simulated — the pods bound to it run as host processes.

Started by ``LocalCluster`` as ``python -m localcluster.execnode run ...`` with a kubeconfig for
``system:node:<name>`` (group ``system:nodes``), so the Node authorizer and NodeRestriction treat it exactly
like a kubelet; ``python -m localcluster.execnode cleanup ...`` removes everything it created on the host,
even after a SIGKILL.

What it does
- Registers the Node (labels ``kubernetes.io/{hostname,os,arch}``,
  ``node.kubernetes.io/instance-type=local.exec``,
  ``neuron.dev/local-exec=true``; taint ``neuron.dev/local-exec=true:NoSchedule``; cpu/memory of the host,
  ``pods=32``, ``aws.amazon.com/neuroncore=--cores``, ``aws.amazon.com/neuron=ceil(cores/2)``), renews its
  Lease in ``kube-node-lease`` every 10 s and its status every 60 s; InternalIP = the bridge address.
- Watches pods with ``spec.nodeName=<node>`` (list + watch from the list's resourceVersion, re-list on 410)
  and runs each container's ``command`` + ``args`` (``$(VAR)`` expanded) as a host process with the project's
  Python environment first on ``PATH``: ``env`` (value, configMapKeyRef, secretKeyRef, fieldRef,
  resourceFieldRef), ``envFrom``, ``workingDir``, ``KUBERNETES_SERVICE_HOST/PORT`` + ``KUBERNETES_PORT*``.
- Networking (``network``): one netns per pod, veth on bridge ``lcxb<hash(cidr)>``, the bridge owns the
  first address of ``--pod-cidr`` and pods the next free ones; no default route, no NAT. Host and pods reach
  pod IPs directly. ``<bridge-ip>:443`` forwards to the apiserver on loopback. ``hostNetwork: true`` pods run
  in the host namespace with podIP = hostIP.
- Volumes (``volumes``): per-container private mount namespace with bind mounts at each ``mountPath``
  (``readOnly``, ``subPath``/``subPathExpr``): emptyDir, configMap, secret, downwardAPI, projected
  (serviceAccountToken via TokenRequest bound to the pod, refreshed at 80 % of its lifetime; configMap;
  secret; downwardAPI), persistentVolumeClaim (the path of a bound hostPath/local PV, else one directory
  per claim under ``<state>/pvc/``; the scheduler wants the claim Bound, so pre-bind it to a PV), hostPath.
  A per-container file is bound at ``terminationMessagePath``.
- NeuronCores (``cores``): ``aws.amazon.com/neuroncore: N`` → N contiguous core ids in
  ``NEURON_RT_VISIBLE_CORES`` as a range (``"2"``, ``"2-3"``; the device plugin writes ``"2,3"``);
  ``aws.amazon.com/neuron: D`` → the 2·D cores of D whole devices. Released when the pod terminates;
  persisted in ``<state>/cores.json``.
- Lifecycle (``pods``): init containers in order, then app containers; restartPolicy with kubelet's
  back-off (10 s doubling to 300 s, ``CrashLoopBackOff``); startup/readiness/liveness probes (httpGet and
  tcpSocket from the host to the pod IP, exec inside the container's namespaces); phase, conditions,
  container statuses with termination messages (≤ 4096 bytes, ``FallbackToLogsOnError``), podIP/hostIP,
  startTime — patched on ``pods/status`` only when they change. Deletion: preStop (exec/httpGet/sleep) →
  SIGTERM to the container's process group → SIGKILL when the grace period is over → delete with
  ``gracePeriodSeconds=0``. A command that cannot be executed ends as exit code 127, reason ``StartError``.
- Restarts of the agent: SIGTERM stops all pods (at most 5 s grace) and removes the bridge; a new ``run``
  on the same state dir keeps each pod's IP and NeuronCores and starts its containers again (the lost
  instance shows as ``lastState.terminated`` exit 137, ``restartCount`` + 1; ``restartPolicy: Never``
  containers end Failed instead). Containers also die with the agent (``PR_SET_PDEATHSIG``).
- One exec node per pod CIDR on a host: an flock on ``/run/localcluster-execnode/<tag>.lock`` makes a
  second ``run`` refuse and keeps ``cleanup`` of another cluster off a live node's network.
- Logs: ``<state>/pods/<namespace>_<pod>_<uid>/<container>.log`` (stdout and stderr together, appended
  across restarts).

What it does NOT do
- No images: ``image`` is recorded in the status and otherwise ignored; ``command`` is required.
- No cgroups: requests/limits are not enforced (cpu, memory, NeuronCores are only accounted by the scheduler
  and the core allocator); no OOMKilled.
- No isolation beyond network + mount namespaces: same PID/UTS/IPC/user namespaces and filesystem as the
  host, runs as root; ``securityContext`` is ignored; missing mount points are created on the host (empty
  directories/files, e.g. ``/var/run/secrets/kubernetes.io/serviceaccount``, ``/dev/termination-log``;
  removed by ``cleanup`` when no other exec node is running).
- No ``kubectl logs``/``exec``/``attach``/``port-forward``/``cp`` (no kubelet API; daemonEndpoints port 0):
  read the log files instead. No metrics/stats endpoints.
- No Services inside pods: no kube-proxy, so ClusterIPs do not route; no service-link env vars besides
  ``KUBERNETES_*``; no cluster DNS (/etc/resolv.conf and /etc/hosts are the host's). Use pod IPs
  (EndpointSlices carry them) or the API forwarder.
- No CSI, no volume provisioning or PV binding; ConfigMap/Secret volumes are not updated after start;
  ephemeral, image, iscsi, nfs… volume types are rejected (the pod stays Pending with the reason).
- No restartable init containers (sidecars), ephemeral containers, in-place resize, grpc probes,
  postStart hooks, pod overhead, hugepages, static/mirror pods, eviction, graceful node shutdown, events.
"""
