{{/* Chart name, truncated to 63 characters. */}}
{{- define "gpu-slicer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone if it already contains the chart name. */}}
{{- define "gpu-slicer.fullname" -}}
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

{{- define "gpu-slicer.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/* The pod's labels: the chart's own, plus selectorLabelsOverride (as NVIDIA's chart). */}}
{{- define "gpu-slicer.templateLabels" -}}
app.kubernetes.io/name: {{ include "gpu-slicer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Values.selectorLabelsOverride }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* What the DaemonSet (and the Service) select: selectorLabelsOverride when set. */}}
{{- define "gpu-slicer.selectorLabels" -}}
{{- if .Values.selectorLabelsOverride }}
{{- toYaml .Values.selectorLabelsOverride }}
{{- else }}
{{- include "gpu-slicer.templateLabels" . }}
{{- end }}
{{- end }}

{{- define "gpu-slicer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gpu-slicer.templateLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gpu-slicer.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ConfigMap to mount: an existing one (config.name) or the one built from config.map. */}}
{{- define "gpu-slicer.configMapName" -}}
{{- if .Values.config.name }}
{{- .Values.config.name }}
{{- else if .Values.config.map }}
{{- printf "%s-configs" (include "gpu-slicer.fullname" .) }}
{{- end }}
{{- end }}

{{/* "true" when a config.map config exists that NVIDIA's rules pick with no node label: config.default, or a fallback strategy that finds one. */}}
{{- define "gpu-slicer.hasDefaultConfig" -}}
{{- $found := false }}
{{- if .Values.config.default }}
{{- $found = true }}
{{- else }}
{{- range .Values.config.fallbackStrategies }}
{{- if and (eq . "named") (hasKey $.Values.config.map "default") }}{{ $found = true }}{{ end }}
{{- if and (eq . "single") (eq (len $.Values.config.map) 1) }}{{ $found = true }}{{ end }}
{{- if eq . "empty" }}{{ $found = true }}{{ end }}
{{- end }}
{{- end }}
{{- $found }}
{{- end }}

{{/* "true" when the MPS directories are mounted: mps.enabled, or by default when a config may use sharing.mps. */}}
{{- define "gpu-slicer.mpsEnabled" -}}
{{- if typeIs "bool" .Values.mps.enabled }}
{{- .Values.mps.enabled }}
{{- else if .Values.config.name }}
{{- true }}
{{- else }}
{{- $mps := false }}
{{- range $name, $text := .Values.config.map }}
{{- $config := $text | fromYaml }}
{{- if and $config.sharing (hasKey $config.sharing "mps") }}{{ $mps = true }}{{ end }}
{{- end }}
{{- $mps }}
{{- end }}
{{- end }}

{{/* "true" when the daemon talks to the API server: per-node config, the start-up taint, MIG Manager's state, applying MIG layouts. */}}
{{- define "gpu-slicer.needsApi" -}}
{{- or (ne (include "gpu-slicer.configMapName" . | trim) "") (ne .Values.startupTaint "") .Values.migManager.followState .Values.migManager.apply }}
{{- end }}

{{/* The daemon publishes its node's MIG state (gpu-slicer.io/mig-state): on
with either MIG option unless migManager.publishState is false. */}}
{{- define "gpu-slicer.publishesMigState" -}}
{{- and (or .Values.migManager.followState .Values.migManager.apply) .Values.migManager.publishState }}
{{- end }}

{{/* The daemon patches its own Node: the start-up taint, the MIG state label, the published MIG state. */}}
{{- define "gpu-slicer.patchesNode" -}}
{{- or (ne .Values.startupTaint "") .Values.migManager.apply (eq (include "gpu-slicer.publishesMigState" . | trim) "true") }}
{{- end }}

{{/* The Service for the metrics endpoint: asked for, or needed by the ServiceMonitor. */}}
{{- define "gpu-slicer.metricsService" -}}
{{- and .Values.metrics.enabled (or .Values.metrics.service.enabled .Values.metrics.serviceMonitor.enabled) }}
{{- end }}
