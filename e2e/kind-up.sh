#!/usr/bin/env bash
# For users WITH Docker (not executed in this project's CI, which has no container engine):
# create a kind cluster, give its worker fake Neuron capacity, build and load the images, install the chart
# and run the e2e suite against it.
#
#   e2e/kind-up.sh            # create + install + test
#   e2e/kind-up.sh --delete   # remove the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${KIND_CLUSTER:-neuron-e2e}
if [[ ${1:-} == --delete ]]; then kind delete cluster --name "$CLUSTER"; exit 0; fi
command -v docker >/dev/null || { echo "kind-up.sh needs Docker" >&2; exit 1; }
command -v kind >/dev/null || go install sigs.k8s.io/kind@v0.30.0

cat <<YAML | kind create cluster --name "$CLUSTER" --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels: {node.kubernetes.io/instance-type: inf2.xlarge}
  - role: worker
    labels: {node.kubernetes.io/instance-type: m5.xlarge}
YAML
export KUBECONFIG
KUBECONFIG=$(mktemp) && kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"

# Fake NeuronCores on the "inf2" worker (what the Neuron device plugin would advertise); pods that request
# them schedule there and run the cpu runtime, since there is no Neuron device.
node=$(kubectl get nodes -l node.kubernetes.io/instance-type=inf2.xlarge -o name | head -1)
kubectl patch "$node" --subresource=status --type=merge \
  -p '{"status":{"capacity":{"aws.amazon.com/neuroncore":"2","aws.amazon.com/neuron":"1"},"allocatable":{"aws.amazon.com/neuroncore":"2","aws.amazon.com/neuron":"1"}}}'

docker build --target operator -t neuron-operator:e2e .
docker build --target runtime --build-arg RUNTIME_FLAVOR=cpu -t neuron-runtime:e2e .
kind load docker-image --name "$CLUSTER" neuron-operator:e2e neuron-runtime:e2e

kubectl create namespace neuron-system --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n neuron-system -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: neuron-artifacts}
spec:
  accessModes: [ReadWriteOnce]   # kind's local-path provisioner; one node serves and compiles in this setup
  resources: {requests: {storage: 5Gi}}
YAML
helm upgrade --install neuron-operator charts/neuron-operator -n neuron-system --wait \
  --set image.repository=neuron-operator --set image.tag=e2e \
  --set runtimeImages.cpu.repository=neuron-runtime --set runtimeImages.cpu.tag=e2e \
  --set-json 'compile.nodeSelector={"node.kubernetes.io/instance-type":"m5.xlarge"}'

NEURON_E2E_NAMESPACE=neuron-system .venv/bin/python -m pytest e2e/suite -v
