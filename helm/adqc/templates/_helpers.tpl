{{/* Chart name. */}}
{{- define "adqc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name (max 63 characters). */}}
{{- define "adqc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component: adqc.component (dict "root" $ "component" "worker"). */}}
{{- define "adqc.component" -}}
{{- printf "%s-%s" (include "adqc.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "adqc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "adqc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker"). */}}
{{- define "adqc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adqc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component. */}}
{{- define "adqc.componentLabels" -}}
{{ include "adqc.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The adqc image. */}}
{{- define "adqc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Triton image (default: the adqc image). */}}
{{- define "adqc.tritonImage" -}}
{{- if .Values.triton.image.repository -}}
{{- printf "%s:%s" .Values.triton.image.repository (default .Chart.AppVersion .Values.triton.image.tag) -}}
{{- else -}}
{{- include "adqc.image" . -}}
{{- end -}}
{{- end -}}

{{- define "adqc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "adqc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Env var ADQC_STORE__URL-style entry for the Redis URL: (dict "root" $ "name" "ADQC_STORE__URL"). */}}
{{- define "adqc.redisUrlEnv" -}}
- name: {{ .name }}
{{- if .root.Values.redis.enabled }}
  value: {{ printf "redis://%s:6379/0" (include "adqc.component" (dict "root" .root "component" "redis")) | quote }}
{{- else if .root.Values.redis.externalUrlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.redis.externalUrlSecret.name }}
      key: {{ .root.Values.redis.externalUrlSecret.key }}
{{- else if .root.Values.redis.externalUrl }}
  value: {{ .root.Values.redis.externalUrl | quote }}
{{- else }}
{{- fail "redis.enabled is false: set redis.externalUrl or redis.externalUrlSecret.name" }}
{{- end }}
{{- end -}}

{{/* Strimzi namespace for KafkaTopic resources. */}}
{{- define "adqc.strimziNamespace" -}}
{{- default .Release.Namespace .Values.strimzi.namespace -}}
{{- end -}}
