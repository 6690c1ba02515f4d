{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "switchyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The gateway's pods (not the try-out Redis's, which adds its own component). */}}
{{- define "switchyard.gatewaySelectorLabels" -}}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "switchyard.labels" -}}
{{ include "switchyard.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the pods mount: the operator's, or the one the chart makes. */}}
{{- define "switchyard.secretName" -}}
{{- default (include "switchyard.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* Whether any secret file is mounted. */}}
{{- define "switchyard.hasSecrets" -}}
{{- if or .Values.admin.enabled .Values.apiKeys .Values.redis.urlSecretKey .Values.serviceMonitor.bearerTokenSecretKey -}}true{{- end -}}
{{- end -}}

{{/* The Redis URL when the chart deploys Redis. */}}
{{- define "switchyard.redisUrl" -}}
{{- if .Values.redis.deploy -}}
{{- printf "redis://%s-redis:6379/" (include "switchyard.fullname" .) -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.instances" -}}
{{- if .Values.redis.instances -}}
{{- .Values.redis.instances | int -}}
{{- else if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.maxReplicas | int -}}
{{- else -}}
{{- .Values.replicaCount | int -}}
{{- end -}}
{{- end -}}
