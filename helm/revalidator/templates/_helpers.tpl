{{- define "revalidator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "revalidator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "revalidator.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: daemon
{{- end -}}

{{- define "revalidator.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "revalidator.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "revalidator.rayAddress" -}}
{{- if .Values.ray.create -}}{{ include "revalidator.fullname" . }}-ray-head-svc:6379{{- else -}}{{ .Values.ray.address }}{{- end -}}
{{- end -}}

{{- define "revalidator.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* The restricted security context every container gets. */}}
{{- define "revalidator.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Ray's auth token from a Secret, for the daemon and every Ray node. */}}
{{- define "revalidator.rayAuthEnv" -}}
{{- if .Values.ray.authTokenSecret }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.ray.authTokenSecret }}
      key: token
{{- end }}
{{- end -}}

{{/* The Secret holding POST /sweep's bearer token (key "token"): the chart's own, or daemon.sweepTokenSecret. */}}
{{- define "revalidator.sweepTokenSecret" -}}
{{- default (printf "%s-sweep-token" (include "revalidator.fullname" .)) .Values.daemon.sweepTokenSecret -}}
{{- end -}}
