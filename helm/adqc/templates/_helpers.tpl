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

{{/* Env entries for the Redis URL: (dict "root" $ "name" "ADQC_STORE__URL"). With the bundled
Redis's password: by default the Secret is mounted as a file (adqc.storeVolumes) named by
ADQC_REDIS_PASSWORD_FILE and the URL has no password (every process that opens the store adds
it from the file); with redis.auth.passwordFile false, ADQC_REDIS_PASSWORD comes from the Secret
and the URL refers to it ($(VAR) expansion by the kubelet). Either way the password is never in
a ConfigMap or in the pod spec. store.durable adds ?durable=file://<mountPath>. */}}
{{- define "adqc.redisUrlEnv" -}}
{{- $durable := include "adqc.durableUrl" .root }}
{{- if .root.Values.redis.enabled }}
{{- $host := include "adqc.component" (dict "root" .root "component" "redis") }}
{{- $query := ternary (printf "?durable=%s" $durable) "" (ne $durable "") }}
{{- if include "adqc.redisAuth" .root }}
{{- if .root.Values.redis.auth.passwordFile }}
- name: ADQC_REDIS_PASSWORD_FILE
  value: {{ include "adqc.redisPasswordFile" .root | quote }}
- name: {{ .name }}
  value: {{ printf "redis://%s:6379/0%s" $host $query | quote }}
{{- else }}
- name: ADQC_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "adqc.redisSecretName" .root }}
      key: {{ .root.Values.redis.auth.existingSecretKey }}
- name: {{ .name }}
  value: {{ printf "redis://:$(ADQC_REDIS_PASSWORD)@%s:6379/0%s" $host $query | quote }}
{{- end }}
{{- else }}
- name: {{ .name }}
  value: {{ printf "redis://%s:6379/0%s" $host $query | quote }}
{{- end }}
{{- else if .root.Values.redis.externalUrlSecret.name }}
{{- /* The URL comes whole from the Secret: with store.durable it must carry the
?durable=file://<mountPath> query itself (docs/OPERATIONS.md). */}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.redis.externalUrlSecret.name }}
      key: {{ .root.Values.redis.externalUrlSecret.key }}
{{- else if .root.Values.redis.externalUrl }}
{{- $url := .root.Values.redis.externalUrl }}
{{- if $durable }}
{{- $url = printf "%s%sdurable=%s" $url (ternary "&" "?" (contains "?" $url)) $durable }}
{{- end }}
- name: {{ .name }}
  value: {{ $url | quote }}
{{- else }}
{{- fail "redis.enabled is false: set redis.externalUrl or redis.externalUrlSecret.name" }}
{{- end }}
{{- end -}}

{{/* file:// URL of the durable reference store ("" when store.durable is off). */}}
{{- define "adqc.durableUrl" -}}
{{- if .Values.store.durable.enabled -}}
{{- printf "file://%s" .Values.store.durable.mountPath -}}
{{- end -}}
{{- end -}}

{{/* The claim holding the durable reference store. */}}
{{- define "adqc.referencesClaim" -}}
{{- default (include "adqc.component" (dict "root" . "component" "references")) .Values.store.durable.existingClaim -}}
{{- end -}}

{{/* Where the Redis password Secret is mounted as a file (redis.auth.passwordFile). */}}
{{- define "adqc.redisPasswordFile" -}}
{{- printf "/etc/adqc/redis-auth/%s" .Values.redis.auth.existingSecretKey -}}
{{- end -}}

{{/* volumeMounts of every pod that opens the store: the Redis password file, the durable
reference store. */}}
{{- define "adqc.storeVolumeMounts" -}}
{{- if and (include "adqc.redisAuth" .) .Values.redis.auth.passwordFile }}
- name: redis-auth
  mountPath: /etc/adqc/redis-auth
  readOnly: true
{{- end }}
{{- if .Values.store.durable.enabled }}
- name: references
  mountPath: {{ .Values.store.durable.mountPath }}
{{- end }}
{{- end -}}

{{/* volumes for adqc.storeVolumeMounts. */}}
{{- define "adqc.storeVolumes" -}}
{{- if and (include "adqc.redisAuth" .) .Values.redis.auth.passwordFile }}
- name: redis-auth
  secret:
    secretName: {{ include "adqc.redisSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.redis.auth.existingSecretKey }}
        path: {{ .Values.redis.auth.existingSecretKey }}
{{- end }}
{{- if .Values.store.durable.enabled }}
- name: references
  persistentVolumeClaim:
    claimName: {{ include "adqc.referencesClaim" . }}
{{- end }}
{{- end -}}

{{/* Strimzi namespace for KafkaTopic resources. */}}
{{- define "adqc.strimziNamespace" -}}
{{- default .Release.Namespace .Values.strimzi.namespace -}}
{{- end -}}

{{/* Pod-level security context shared by every pod of the chart: (dict "uid" 10001). */}}
{{- define "adqc.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: no privilege escalation, no capabilities, read-only root. */}}
{{- define "adqc.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Name of the bundled Redis password Secret (or the user's existing one). */}}
{{- define "adqc.redisSecretName" -}}
{{- default (include "adqc.component" (dict "root" . "component" "redis")) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/* True when the bundled Redis requires a password. */}}
{{- define "adqc.redisAuth" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.enabled }}true{{ end -}}
{{- end -}}

{{/* Kafka connection env of the workers and the helm-test pod (ADQC_KAFKA__* and topics). */}}
{{- define "adqc.kafkaEnv" -}}
- name: ADQC_KAFKA__BOOTSTRAP
  value: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
- name: ADQC_KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}
- name: ADQC_KAFKA__SASL_MECHANISM
  value: {{ required "kafka.sasl.mechanism is required with SASL" .Values.kafka.sasl.mechanism | quote }}
- name: ADQC_KAFKA__SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with SASL" .Values.kafka.sasl.username | quote }}
- name: ADQC_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.passwordSecret.name is required with SASL" .Values.kafka.sasl.passwordSecret.name }}
      key: {{ .Values.kafka.sasl.passwordSecret.key }}
{{- end }}
{{- if .Values.kafka.caSecret.name }}
- name: ADQC_KAFKA__SSL_CAFILE
  value: /etc/adqc/kafka-ca/{{ .Values.kafka.caSecret.key }}
{{- end }}
{{- if .Values.kafka.clientCertSecret.name }}
{{- if not (hasSuffix "SSL" .Values.kafka.securityProtocol) }}
{{- fail "kafka.clientCertSecret (mTLS) needs kafka.securityProtocol SSL or SASL_SSL" }}
{{- end }}
- name: ADQC_KAFKA__SSL_CERTFILE
  value: /etc/adqc/kafka-client/{{ .Values.kafka.clientCertSecret.certKey }}
- name: ADQC_KAFKA__SSL_KEYFILE
  value: /etc/adqc/kafka-client/{{ .Values.kafka.clientCertSecret.keyKey }}
{{- end }}
- name: ADQC_TOPICS__FRAMES
  value: {{ .Values.kafka.topics.frames | quote }}
- name: ADQC_TOPICS__RESULTS
  value: {{ .Values.kafka.topics.results | quote }}
- name: ADQC_TOPICS__ALARMS
  value: {{ .Values.kafka.topics.alarms | quote }}
- name: ADQC_TOPICS__DLQ
  value: {{ .Values.kafka.topics.dlq | quote }}
{{- end -}}

{{/* volumeMounts for the Kafka CA and client certificate (mTLS). */}}
{{- define "adqc.kafkaVolumeMounts" -}}
{{- if .Values.kafka.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/adqc/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.clientCertSecret.name }}
- name: kafka-client
  mountPath: /etc/adqc/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* volumes for the Kafka CA and client certificate (mTLS). */}}
{{- define "adqc.kafkaVolumes" -}}
{{- with .Values.kafka.caSecret }}
{{- if .name }}
- name: kafka-ca
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.kafka.clientCertSecret }}
{{- if .name }}
- name: kafka-client
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .certKey }}
        path: {{ .certKey }}
      - key: {{ .keyKey }}
        path: {{ .keyKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Label selector of this release's worker metrics in PromQL: namespace + job (Service). */}}
{{- define "adqc.promSelector" -}}
{{- printf "namespace=\"%s\",job=\"%s\"" .Release.Namespace (include "adqc.component" (dict "root" . "component" "worker")) -}}
{{- end -}}
