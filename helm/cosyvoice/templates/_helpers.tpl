{{/* Names ------------------------------------------------------------------ */}}

{{- define "cosyvoice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: the release name, with the chart name unless already in it. */}}
{{- define "cosyvoice.fullname" -}}
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

{{- define "cosyvoice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cosyvoice.routerName" -}}
{{- printf "%s-router" (include "cosyvoice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Function Knative Service name. Usage: include "cosyvoice.functionName" (dict "ctx" $ "function" "render") */}}
{{- define "cosyvoice.functionName" -}}
{{- printf "%s-%s" (include "cosyvoice.fullname" .ctx) .function | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* InferenceService name. KServe appends "-predictor" and Knative a revision suffix, so keep it short. */}}
{{- define "cosyvoice.predictorName" -}}
{{- printf "%s-%s" (include "cosyvoice.fullname" .ctx) .model | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{- define "cosyvoice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cosyvoice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret this chart writes when a development credential is given in values. */}}
{{- define "cosyvoice.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "cosyvoice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cosyvoice.mongodbName" -}}
{{- printf "%s-mongodb" (include "cosyvoice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels --------------------------------------------------------------------
Usage: include "cosyvoice.labels" (dict "ctx" $ "component" "router")
*/}}
{{- define "cosyvoice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cosyvoice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "cosyvoice.labels" -}}
helm.sh/chart: {{ include "cosyvoice.chart" .ctx }}
{{ include "cosyvoice.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cosyvoice
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- range $key, $value := .ctx.Values.commonLabels }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* Images --------------------------------------------------------------------
Usage: include "cosyvoice.image" (dict "ctx" $ "image" .Values.image)
*/}}
{{- define "cosyvoice.image" -}}
{{- $registry := default .image.registry .ctx.Values.global.imageRegistry -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag | toString -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "cosyvoice.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Endpoints ----------------------------------------------------------------- */}}

{{/* The Service name the nats chart gives its server, so the bundled NATS is found. */}}
{{- define "cosyvoice.natsFullname" -}}
{{- $nats := .Values.nats | default dict -}}
{{- if $nats.fullnameOverride -}}
{{- $nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nats" $nats.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "cosyvoice.eventBusUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc.cluster.local:4222" (include "cosyvoice.natsFullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.eventBus.url -}}
{{- end -}}
{{- end -}}

{{/* Base URL of a model's predictor. Usage: include "cosyvoice.predictorUrl" (dict "ctx" $ "model" "cosyvoice3") */}}
{{- define "cosyvoice.predictorUrl" -}}
{{- $spec := get .ctx.Values.predictor.models .model -}}
{{- if $spec.url -}}
{{- $spec.url -}}
{{- else if and .ctx.Values.predictor.enabled $spec.enabled -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "cosyvoice.predictorName" .) .ctx.Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "cosyvoice.routerUrl" -}}
{{- if eq .Values.router.mode "knative" -}}
{{- printf "http://%s.%s.svc.cluster.local" (include "cosyvoice.routerName" .) .Release.Namespace -}}
{{- else -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "cosyvoice.routerName" .) .Release.Namespace .Values.router.service.port -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every application container -------------------------
Settings without secrets come from the ConfigMap; credentials come from Secrets.
*/}}
{{- define "cosyvoice.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "cosyvoice.fullname" . }}
{{- end -}}

{{- define "cosyvoice.secretEnv" -}}
{{- $credentials := include "cosyvoice.credentialsSecretName" . -}}
{{- if .Values.mongodb.community.enabled }}
{{- $mdb := .Values.mongodb.community }}
- name: MONGODB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $mdb.passwordSecret.name }}
      key: {{ $mdb.passwordSecret.key }}
- name: DATABASE_URL
  value: {{ printf "mongodb://%s:$(MONGODB_PASSWORD)@%s-svc.%s.svc.cluster.local:27017/%s?replicaSet=%s&authSource=admin" $mdb.username (include "cosyvoice.mongodbName" .) .Release.Namespace $mdb.database (include "cosyvoice.mongodbName" .) | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.database.url }}
      name: {{ $credentials }}
      key: database-url
      {{- else }}
      name: {{ required "database.existingSecret (or database.url) is required" .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
      {{- end }}
{{- end }}
{{- include "cosyvoice.objectStoreEnv" . }}
{{- if .Values.eventBus.existingSecret }}
- name: EVENT_BUS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.eventBus.existingSecret }}
      key: {{ .Values.eventBus.existingSecretKey }}
{{- end }}
- name: WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      {{- if .Values.webhook.secret }}
      name: {{ $credentials }}
      key: webhook-secret
      {{- else }}
      name: {{ required "webhook.existingSecret (or webhook.secret) is required" .Values.webhook.existingSecret }}
      key: {{ .Values.webhook.existingSecretKey }}
      {{- end }}
{{- if or .Values.auth.apiKey .Values.auth.existingSecret }}
- name: API_KEY
  valueFrom:
    secretKeyRef:
      {{- if .Values.auth.apiKey }}
      name: {{ $credentials }}
      key: api-key
      {{- else }}
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKey }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "cosyvoice.objectStoreEnv" -}}
{{- $plain := not (or (empty .Values.objectStore.accessKeyId) (empty .Values.objectStore.secretAccessKey)) }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ ternary (include "cosyvoice.credentialsSecretName" .) .Values.objectStore.existingSecret $plain }}
      key: {{ ternary "aws-access-key-id" .Values.objectStore.accessKeyIdKey $plain }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ ternary (include "cosyvoice.credentialsSecretName" .) .Values.objectStore.existingSecret $plain }}
      key: {{ ternary "aws-secret-access-key" .Values.objectStore.secretAccessKeyKey $plain }}
{{- end -}}

{{/* Probes: HTTP GET on a path, timings from values. Knative sets the port itself.
Usage: include "cosyvoice.httpProbe" (dict "path" "/health" "port" "http" "timings" .Values.router.readinessProbe)
*/}}
{{- define "cosyvoice.httpProbe" -}}
httpGet:
  path: {{ .path }}
  {{- with .port }}
  port: {{ . }}
  {{- end }}
{{- with .timings }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Knative revision annotations for autoscaling.
Usage: include "cosyvoice.knativeScale" (dict "min" 1 "max" 10 "utilization" 70)
*/}}
{{- define "cosyvoice.knativeScale" -}}
autoscaling.knative.dev/metric: concurrency
autoscaling.knative.dev/min-scale: {{ .min | quote }}
autoscaling.knative.dev/max-scale: {{ .max | quote }}
{{- with .utilization }}
autoscaling.knative.dev/target-utilization-percentage: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Values that must agree with each other; fails the render with a clear message. */}}
{{- define "cosyvoice.validate" -}}
{{- range $name, $consumer := .Values.jetstreamSource.consumers }}
{{- if and $.Values.jetstreamSource.enabled $consumer.enabled }}
{{- $function := get $.Values.functions $consumer.function }}
{{- if not $function.enabled }}
{{- fail (printf "jetstreamSource.consumers.%s feeds functions.%s, which is disabled" $name $consumer.function) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.objectStore.accessKeyId (not .Values.objectStore.secretAccessKey) }}
{{- fail "objectStore.accessKeyId needs objectStore.secretAccessKey" }}
{{- end }}
{{- end -}}
