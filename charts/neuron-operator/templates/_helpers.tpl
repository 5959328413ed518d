{{/*
Names, labels, images and RBAC rules shared by every template of the chart.
*/}}

{{/* Chart name, overridable (app.kubernetes.io/name). */}}
{{- define "neuron-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: prefix of every object name (at most 63 characters). */}}
{{- define "neuron-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* helm.sh/chart label value. */}}
{{- define "neuron-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades (Deployment selectors are immutable). */}}
{{- define "neuron-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neuron-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of every object the chart renders. */}}
{{- define "neuron-operator.labels" -}}
helm.sh/chart: {{ include "neuron-operator.chart" . }}
{{ include "neuron-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: neuron-operator
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "neuron-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "neuron-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader-election Lease name. */}}
{{- define "neuron-operator.leaseName" -}}
{{- default (include "neuron-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Artifact PVC name. */}}
{{- define "neuron-operator.artifactPVC" -}}
{{- .Values.artifacts.pvc.name }}
{{- end }}

{{/*
Image reference from {repository, tag, digest}: repository:tag[@digest]; the tag defaults to appVersion.
Call with (dict "image" <map> "root" $).
*/}}
{{- define "neuron-operator.imageRef" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
RBAC rules, read from rbac/rules.yaml (the single source). Call with (dict "root" $ "set" "workload"),
"cluster" or "leaderElection"; renders a YAML list of PolicyRules.
*/}}
{{- define "neuron-operator.rbacRules" -}}
{{- $all := .root.Files.Get "rbac/rules.yaml" | fromYaml }}
{{- $rules := get $all .set }}
{{- if not $rules }}
{{- fail (printf "rbac/rules.yaml has no rules under %q" .set) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}
