#!/usr/bin/env bash
# Wire up the pod network of a kind cluster made from node-image.sh's image (run after `kind create cluster`).
#
# Why: kindnetd cannot be built here, so each node carries a static CNI conflist (ptp + host-local +
# portmap, /etc/cni/net.d/10-ptp.conflist) whose subnet is a placeholder. This script, for every node:
#   1. sets the conflist's subnet to the node's spec.podCIDR (atomic rewrite; new pods use it at once);
#   2. adds `ip route` entries to every other node's pod CIDR via that node's InternalIP;
# then deletes the pods that got an address outside their node's podCIDR before step 1 (typically CoreDNS
# on a worker) so their controllers recreate them, and waits until CoreDNS is Ready.
# Idempotent: a second run rewrites the same config, replaces the same routes and deletes nothing.
# Node containers lose their routes when restarted (`docker restart`): run it again then.
#
# Usage: post-create.sh [--kubeconfig FILE] [--timeout SECONDS] <cluster-name>
#   The kubeconfig defaults to $KUBECONFIG, else `kind get kubeconfig --name <cluster-name>`.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$HERE/versions.sh"
CACHE="${NEURON_OPERATOR_CACHE:-$HOME/.cache/neuron-operator}"
CONFLIST=/etc/cni/net.d/10-ptp.conflist
log() { printf '[post-create %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

kubeconfig="${KUBECONFIG:-}" timeout=180 cluster=""
while (($#)); do
  case $1 in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --kubeconfig=*) kubeconfig=${1#*=}; shift ;;
    --timeout) timeout=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) cluster=$1; shift ;;
  esac
done
[[ -n $cluster ]] || { echo "usage: $0 [--kubeconfig FILE] [--timeout SECONDS] <cluster-name>" >&2; exit 2; }

# docker (kind's nodes live in the project's private engine) and the pinned kubectl/kind when built.
eval "$(bash "$HERE/docker-engine.sh" env)"
KUBECTL=$CACHE/tools/k8s-v$K8S_VERSION/kubectl; [[ -x $KUBECTL ]] || KUBECTL=kubectl
KIND=$CACHE/tools/kind-v$KIND_VERSION/kind; [[ -x $KIND ]] || KIND=kind
tmpkc=""
trap '[[ -z $tmpkc ]] || rm -f "$tmpkc"' EXIT
if [[ -z $kubeconfig ]]; then
  tmpkc=$(mktemp) && "$KIND" get kubeconfig --name "$cluster" > "$tmpkc" && kubeconfig=$tmpkc
fi
k() { "$KUBECTL" --kubeconfig "$kubeconfig" "$@"; }

# The cluster's node containers (kind names them after the Kubernetes nodes).
mapfile -t containers < <(docker ps --filter "label=io.x-k8s.kind.cluster=$cluster" --format '{{.Names}}' | sort)
((${#containers[@]})) || { log "no running node containers for kind cluster '$cluster'"; exit 1; }

# Each node needs its podCIDR (set by kube-controller-manager right after the node registers).
deadline=$((SECONDS + timeout))
while :; do
  nodes=$(k get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}') || nodes=""
  missing=$(awk 'NF < 3' <<< "$nodes")
  [[ $(grep -c . <<< "$nodes") -ge ${#containers[@]} && -z $missing ]] && break
  ((SECONDS < deadline)) || { log "nodes without podCIDR/InternalIP after ${timeout}s:"; echo "$nodes" >&2; exit 1; }
  sleep 1
done

while read -r node cidr ip; do
  [[ " ${containers[*]} " == *" $node "* ]] || { log "node $node is not a container of cluster $cluster"; exit 1; }
  # Rewrite only when different, via rename (containerd reloads CNI config on change).
  docker exec "$node" sh -euc "
    cur=\$(jq -r '.plugins[0].ipam.ranges[0][0].subnet' $CONFLIST)
    if [ \"\$cur\" != '$cidr' ]; then
      jq --arg c '$cidr' '.plugins[0].ipam.ranges = [[{subnet: \$c}]]' $CONFLIST > $CONFLIST.new
      mv $CONFLIST.new $CONFLIST
      echo \"$node: subnet \$cur -> $cidr\" >&2
    fi"
  while read -r other ocidr oip; do
    [[ $other == "$node" ]] || docker exec "$node" ip route replace "$ocidr" via "$oip"
  done <<< "$nodes"
done <<< "$nodes"
log "CNI subnets and routes set on ${#containers[@]} node(s)"

# Pods (not hostNetwork) whose address lies outside their node's podCIDR started before the fix.
stale=$(k get pods -A -o json | jq -r --argjson cidrs "$(awk '{printf "%s\"%s\":\"%s\"", (NR>1?",":"{"), $1, $2} END {print "}"}' <<< "$nodes")" '
  def ip2n: split(".") | map(tonumber) | .[0]*16777216 + .[1]*65536 + .[2]*256 + .[3];
  def inside($c): ($c | split("/")) as [$net, $len]
    | (($net | ip2n) / pow(2; 32 - ($len | tonumber)) | floor) == ((. | ip2n) / pow(2; 32 - ($len | tonumber)) | floor);
  .items[] | select(.spec.hostNetwork != true and .status.podIP != null and .spec.nodeName != null)
  | $cidrs[.spec.nodeName] as $c | select($c != null and (.status.podIP | inside($c) | not))
  | "\(.metadata.namespace) \(.metadata.name)"')
if [[ -n $stale ]]; then
  while read -r ns pod; do
    log "recreating $ns/$pod (address outside its node's podCIDR)"
    k -n "$ns" delete pod "$pod" --wait=false >/dev/null
  done <<< "$stale"
fi

# CoreDNS is Ready when the deployment's replicas are all ready and no old (terminating) pod is left.
while :; do
  want=$(k -n kube-system get deployment coredns -o jsonpath='{.spec.replicas}')
  ready=$(k -n kube-system get pods -l k8s-app=kube-dns -o json | jq '[.items[]
    | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length')
  terminating=$(k -n kube-system get pods -l k8s-app=kube-dns -o json | jq '[.items[] | select(.metadata.deletionTimestamp != null)] | length')
  ((ready >= want && terminating == 0)) && break
  ((SECONDS < deadline)) || { log "CoreDNS not Ready after ${timeout}s ($ready/$want ready, $terminating terminating)"; exit 1; }
  sleep 1
done
log "CoreDNS is Ready ($ready/$want)"
