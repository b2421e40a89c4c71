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

{{- define "gpu-slicer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpu-slicer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpu-slicer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gpu-slicer.selectorLabels" . }}
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

{{/* The key of the ConfigMap used as config.yaml: config.default, else the only key of config.map. */}}
{{- define "gpu-slicer.configKey" -}}
{{- if .Values.config.default }}
{{- .Values.config.default }}
{{- else if eq (len .Values.config.map) 1 }}
{{- keys .Values.config.map | first }}
{{- else if .Values.config.map }}
{{- fail "config.map holds several configs: set config.default to the one to use" }}
{{- else }}
{{- fail "config.name is set: set config.default to the key of the config to use" }}
{{- end }}
{{- end }}
