{{/* Names and labels shared by every template. */}}
{{- define "pyramid-moa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pyramid-moa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pyramid-moa.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .tier }}
{{- end -}}

{{/* The tier's deployment spec, its remote URLs "tier://NAME" turned into the headless Service of tier NAME:
     dns:/// makes the router balance calls over every ready pod of that tier (gRPC round_robin). */}}
{{- define "pyramid-moa.tierSpec" -}}
{{- $full := include "pyramid-moa.fullname" .root -}}
{{- $url := printf "dns:///%s-${1}-headless.%s.svc.%s:8001" $full .root.Release.Namespace .root.Values.clusterDomain -}}
{{- regexReplaceAll "tier://([a-z0-9-]+)" (toYaml .t.spec) $url -}}
{{- end -}}

{{- define "pyramid-moa.calibrationConfigMap" -}}
{{- if .Values.calibration.existingConfigMap -}}
{{- .Values.calibration.existingConfigMap -}}
{{- else -}}
{{- printf "%s-calibration" (include "pyramid-moa.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the gateway's API keys file: the user's, the one this chart makes, or none
     (gateway.insecureNoKeys). */}}
{{- define "pyramid-moa.gatewayKeysSecret" -}}
{{- if .Values.gateway.apiKeys.existingSecret -}}
{{- .Values.gateway.apiKeys.existingSecret -}}
{{- else if not .Values.gateway.insecureNoKeys -}}
{{- printf "%s-openai-keys" (include "pyramid-moa.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the admin key (model control): the user's, or the one this chart makes. */}}
{{- define "pyramid-moa.adminKeySecret" -}}
{{- if .Values.security.adminKey.existingSecret -}}
{{- .Values.security.adminKey.existingSecret -}}
{{- else -}}
{{- printf "%s-admin-key" (include "pyramid-moa.fullname" .) -}}
{{- end -}}
{{- end -}}
