#!/usr/bin/env bash
# The project's private Docker engine (Debian's docker.io), used to build the images and to run kind.
#
#   docker-engine.sh start   start dockerd if it is not running (idempotent); prints `export DOCKER_HOST=...`
#   docker-engine.sh stop    stop it by pidfile (SIGTERM, then SIGKILL after 30 s) and wait for its processes
#   docker-engine.sh env     print the environment a caller needs (DOCKER_HOST, PATH with Debian's client first)
#   docker-engine.sh status  exit 0 when it answers
#
# It never touches a system Docker: own socket, pidfile and exec root under $NEURON_DOCKER_STATE
# (default /run/neuron-operator-docker, short because containerd's socket paths are length-limited) and
# own data root under the project's cache (default ~/.cache/neuron-operator/docker-data), so built images
# survive between runs while the engine itself is started by whoever needs it.
#
# Its default OCI runtime is `runc-capfix` (see that file): it drops the capabilities missing from this
# host's bounding set, without which `--privileged` containers (every kind node) cannot start here.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
STATE="${NEURON_DOCKER_STATE:-/run/neuron-operator-docker}"
DATA="${NEURON_DOCKER_DATA:-$CACHE/docker-data}"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
DEBIAN_DOCKER=/usr/bin/docker   # Debian's client; another `docker` may come first on PATH
log() { printf '[docker-engine %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cap_names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
  NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT
  SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE
  AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ
  PERFMON BPF CHECKPOINT_RESTORE)

missing_caps_json() {  # capabilities Docker knows that this process's bounding set lacks, as a JSON list
  local bnd last out=() i
  bnd=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  for ((i = 0; i <= last && i < ${#cap_names[@]}; i++)); do
    ((bnd >> i & 1)) || out+=("\"CAP_${cap_names[i]}\"")
  done
  local IFS=,
  printf '[%s]' "${out[*]}"
}

emit_env() {
  mkdir -p "$STATE/bin"
  ln -sf "$DEBIAN_DOCKER" "$STATE/bin/docker"
  printf 'export DOCKER_HOST=unix://%s\nexport PATH=%s:$PATH\n' "$SOCK" "$STATE/bin"
}

answers() { DOCKER_HOST="unix://$SOCK" "$DEBIAN_DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  for b in dockerd "$DEBIAN_DOCKER" runc jq; do
    command -v "$b" >/dev/null || { log "missing $b: run .ci/bootstrap (installs docker.io, jq)"; exit 1; }
  done
  mkdir -p "$STATE/bin" "$DATA"
  if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers; then
    emit_env
    return 0
  fi
  # The wrapper reads its drop list from a file beside it: the daemon's environment does not reach runc.
  install -m 0755 "$HERE/runc-capfix" "$STATE/bin/runc-capfix"
  missing_caps_json > "$STATE/bin/runc-capfix.drop"
  command -v runc > "$STATE/bin/runc-capfix.real"
  log "starting dockerd (data root $DATA; dropping $(cat "$STATE/bin/runc-capfix.drop") from containers)"
  # Not in our process group: the engine outlives the command that started it (stop it with `stop`).
  setsid dockerd --host "unix://$SOCK" --data-root "$DATA" --exec-root "$STATE/exec" --pidfile "$PIDFILE" \
    --add-runtime "capfix=$STATE/bin/runc-capfix" --default-runtime capfix \
    --log-level warn </dev/null >"$STATE/dockerd.log" 2>&1 &
  local i
  for ((i = 0; i < 120; i++)); do
    answers && { emit_env; log "dockerd is up"; return 0; }
    sleep 0.5
  done
  log "dockerd did not answer within 60 s; its log:"; tail -20 "$STATE/dockerd.log" >&2; exit 1
}

stop() {
  [[ -f $PIDFILE ]] || { log "not running"; return 0; }
  local pid i
  pid=$(cat "$PIDFILE")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  log "dockerd stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) emit_env ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
