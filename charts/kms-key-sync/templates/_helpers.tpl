{{/*
The chart name, or nameOverride.
*/}}
{{- define "kms-key-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name if it contains the
chart name, else <release>-<chart>. With the release name kms-key-sync the objects have the same
names as those of the kustomize install (config/default).
*/}}
{{- define "kms-key-sync.fullname" -}}
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

{{/*
The name of the ServiceAccount and of the Deployment.
*/}}
{{- define "kms-key-sync.managerName" -}}
{{- printf "%s-controller-manager" (include "kms-key-sync.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the metrics Service.
*/}}
{{- define "kms-key-sync.metricsServiceName" -}}
{{- printf "%s-controller-manager-metrics-service" (include "kms-key-sync.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kms-key-sync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "kms-key-sync.labels" -}}
helm.sh/chart: {{ include "kms-key-sync.chart" . }}
{{ include "kms-key-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the manager's pods.
*/}}
{{- define "kms-key-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-key-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
control-plane: controller-manager
{{- end }}

{{/*
The manager image.
*/}}
{{- define "kms-key-sync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The metrics port's name: https when metrics are served securely, else http.
*/}}
{{- define "kms-key-sync.metricsPortName" -}}
{{- if .Values.metrics.secure }}https{{ else }}http{{ end }}
{{- end }}

{{/*
Fails the render on combinations of values that the schema cannot express.
*/}}
{{- define "kms-key-sync.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 requires leaderElection.enabled: replicas would sync the same selectors at the same time" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled requires metrics.enabled" }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not .Values.metrics.enabled) }}
{{- fail "prometheusRule.enabled requires metrics.enabled" }}
{{- end }}
{{- if and .Values.grafanaDashboard.enabled (not .Values.metrics.enabled) }}
{{- fail "grafanaDashboard.enabled requires metrics.enabled" }}
{{- end }}
{{- end }}
