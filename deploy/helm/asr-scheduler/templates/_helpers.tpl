{{/* Names and labels shared by every manifest. */}}
{{- define "asr.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "asr.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "asr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "asr.labels" -}}
{{ include "asr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "asr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "asr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The `serve` settings of the YAML config file (field names of ServeConfig). */}}
{{- define "asr.config" -}}
{{- $models := list -}}
{{- range .Values.models -}}
{{- $models = append $models (printf "%s=%s" .name .path) -}}
{{- end -}}
{{- $cfg := dict
  "model" (ternary (first .Values.models).path $models (eq (len .Values.models) 1))
  "devices" (ternary "cpu" .Values.devices (eq (int .Values.gpusPerPod) 0))
  "workers_per_device" .Values.workersPerDevice
  "max_batch_size" .Values.batching.maxBatchSize
  "max_batch_audio_s" .Values.batching.maxBatchAudioS
  "max_queue_delay_ms" .Values.batching.maxQueueDelayMs
  "max_queue" .Values.batching.maxQueue
  "queue_timeout_s" .Values.batching.queueTimeoutS
  "cpu_fallback" .Values.fallback.cpuFallback
  "memory_floor_fraction" .Values.fallback.memoryFloorFraction
-}}
{{- toYaml (merge (deepCopy .Values.config) $cfg) -}}
{{- end -}}

{{/* The health probe: native gRPC in plaintext, the image's script with TLS. */}}
{{- define "asr.probe" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command: ["python3", "/opt/asr/healthcheck.py"]
timeoutSeconds: 5
{{- else }}
grpc:
  port: {{ .root.Values.ports.grpc }}
  service: {{ .service | quote }}
timeoutSeconds: 3
{{- end }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{- define "asr.envoySelectorLabels" -}}
app.kubernetes.io/name: {{ include "asr.name" . }}-envoy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
