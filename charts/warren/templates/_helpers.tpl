{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "warren.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release already contains it. */}}
{{- define "warren.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "warren.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warren.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "warren.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "warren.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "warren.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "warren.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "warren.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator may do with Warren's kinds, Secrets, Events and the workers' Deployments and
Services, wherever it watches.
Secrets: `get` only - the operator reads a Broker's credentials by name and never lists them.
Deployments and Services: only those of Worker resources; their owner references let the
garbage collector delete them, so the operator needs no `delete`.
*/}}
{{- define "warren.watchRules" -}}
- apiGroups: ["warren.dev"]
  resources: ["brokers", "exchanges", "queues", "bindings", "policies", "workers"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["warren.dev"]
  resources: ["brokers/status", "exchanges/status", "queues/status", "bindings/status", "policies/status", "workers/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["warren.dev"]
  resources: ["brokers/finalizers", "exchanges/finalizers", "queues/finalizers", "bindings/finalizers", "policies/finalizers", "workers/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}
