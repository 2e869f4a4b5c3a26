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
A digest, when given, pins the image (the tag stays for people reading it).
Usage: include "cosyvoice.image" (dict "ctx" $ "image" .Values.image)
*/}}
{{- define "cosyvoice.image" -}}
{{- $registry := default .image.registry .ctx.Values.global.imageRegistry -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag | toString -}}
{{- $reference := ternary (printf "%s/%s" $registry .image.repository) .image.repository (not (empty $registry)) -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" $reference $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $reference $tag -}}
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

{{/* Environment -----------------------------------------------------------------
The one place that decides what each workload's process reads. Workloads:
  router    cosyvoice-api serve
  render    cosyvoice-api function render    (the same runtime as the router)
  webhook   cosyvoice-api function webhook   (the same runtime as the router)
  source    cosyvoice-api jetstream-source   (bus, database, consumer settings)
  predictor cosyvoice-api predictor          (engine, weights, blob store for features)
Usage: include "cosyvoice.env" (dict "ctx" $ "workload" "router")
       include "cosyvoice.env" (dict "ctx" $ "workload" "source" "consumer" $consumer "sink" "render")
       include "cosyvoice.env" (dict "ctx" $ "workload" "predictor" "model" "cosyvoice3")
*/}}
{{- define "cosyvoice.env" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $workload := .workload -}}
{{- $runtime := has $workload (list "router" "render" "webhook") -}}
{{- if ne $workload "source" }}
- name: LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
{{- end }}
{{- if $runtime }}
- name: LOG_FORMAT
  value: {{ $v.config.logFormat | quote }}
- name: ENGINE
  value: {{ $v.config.engine | quote }}
- name: AUTO_DOWNLOAD_MODELS
  value: "false"
- name: PREDICTOR_URL_V3
  value: {{ include "cosyvoice.predictorUrl" (dict "ctx" $ctx "model" "cosyvoice3") | quote }}
- name: PREDICTOR_URL_V2
  value: {{ include "cosyvoice.predictorUrl" (dict "ctx" $ctx "model" "cosyvoice2") | quote }}
- name: PREDICTOR_MODEL_V3
  value: "cosyvoice3"
- name: PREDICTOR_MODEL_V2
  value: "cosyvoice2"
- name: PREDICTOR_TIMEOUT
  value: {{ $v.config.predictorTimeout | quote }}
- name: MAX_TEXT_LENGTH
  value: {{ $v.config.maxTextLength | quote }}
- name: MAX_TASK_TEXT_LENGTH
  value: {{ $v.config.maxTaskTextLength | quote }}
- name: SAMPLE_RATE
  value: {{ $v.config.sampleRate | quote }}
- name: TASK_MAX_ATTEMPTS
  value: {{ $v.config.taskMaxAttempts | quote }}
- name: WEBHOOK_ALLOW_PRIVATE
  value: {{ $v.webhook.allowPrivate | quote }}
- name: WEBHOOK_MAX_ATTEMPTS
  value: {{ $v.webhook.maxAttempts | quote }}
- name: WEBHOOK_TIMEOUT
  value: {{ $v.webhook.timeoutSeconds | quote }}
{{- with (include "cosyvoice.webhookSecretEnv" $ctx | trim) }}
{{ . }}
{{- end }}
{{- end }}
{{- if eq $workload "router" }}
{{- if eq $v.router.mode "deployment" }}
{{- /* Knative sets PORT itself (and refuses it in a revision); a Deployment must say it. */}}
- name: PORT
  value: {{ $v.router.port | quote }}
{{- end }}
- name: CORS_ORIGINS
  value: {{ $v.config.corsOrigins | quote }}
- name: MAX_AUDIO_DURATION
  value: {{ $v.config.maxAudioDuration | quote }}
- name: WORKER_CONCURRENCY
  value: {{ ternary "0" (toString $v.router.workerConcurrency) $v.functions.render.enabled | quote }}
{{- with (include "cosyvoice.apiKeyEnv" $ctx | trim) }}
{{ . }}
{{- end }}
{{- end }}
{{- if has $workload (list "render" "webhook") }}
- name: LISTEN_ADDRESS
  value: {{ printf "[::]:%v" $v.functions.port | quote }}
{{- end }}
{{- if or $runtime (eq $workload "source") }}
{{- with (include "cosyvoice.databaseEnv" $ctx | trim) }}
{{ . }}
{{- end }}
{{- with (include "cosyvoice.eventBusEnv" $ctx | trim) }}
{{ . }}
{{- end }}
{{- end }}
{{- if eq $workload "source" }}
{{- $source := $v.jetstreamSource }}
{{- $sink := get $v.functions .sink }}
- name: JETSTREAM_SUBJECTS
  value: {{ join "," .consumer.subjects | quote }}
- name: JETSTREAM_ACK_WAIT
  value: {{ $source.ackWaitSeconds | quote }}
- name: JETSTREAM_MAX_DELIVER
  value: {{ $source.maxDeliver | quote }}
- name: JETSTREAM_MAX_IN_FLIGHT
  value: {{ $source.maxInFlight | quote }}
{{- /* The function answers when its work is done, at most its Knative timeout later. */}}
- name: JETSTREAM_SINK_TIMEOUT
  value: {{ $sink.timeoutSeconds | quote }}
{{- end }}
{{- if eq $workload "predictor" }}
{{- $predictor := $v.predictor }}
{{- $modelDirEnv := dict "cosyvoice3" "MODEL_DIR_V3" "cosyvoice2" "MODEL_DIR" }}
{{- /* KServe's storage initializer downloads STORAGE_URI into /mnt/models before start. */}}
- name: STORAGE_URI
  value: {{ (get $predictor.models .model).storageUri | quote }}
- name: {{ get $modelDirEnv .model }}
  value: /mnt/models
- name: ENGINE
  value: {{ $predictor.engine | quote }}
- name: AUTO_DOWNLOAD_MODELS
  value: "false"
- name: SYNTHESIS_CONCURRENCY
  value: {{ $predictor.synthesisConcurrency | quote }}
- name: COSYVOICE_FP16
  value: {{ $predictor.fp16 | quote }}
- name: COSYVOICE_TRT
  value: {{ $predictor.trt | quote }}
- name: COSYVOICE_VLLM
  value: {{ $predictor.vllm | quote }}
- name: MAX_TEXT_LENGTH
  value: {{ $v.config.maxTextLength | quote }}
{{- end }}
{{- if or $runtime (eq $workload "predictor") }}
- name: BLOB_STORE_URL
  value: {{ $v.objectStore.url | quote }}
{{- with (include "cosyvoice.objectStoreEnv" $ctx | trim) }}
{{ . }}
{{- end }}
{{- end }}
{{- range $name, $value := $v.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- $extra := dict "router" $v.router.extraEnv "predictor" $v.predictor.extraEnv -}}
{{- with get $extra $workload }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cosyvoice.databaseEnv" -}}
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
      name: {{ include "cosyvoice.credentialsSecretName" . }}
      key: database-url
      {{- else }}
      name: {{ required "database.existingSecret (or database.url) is required" .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "cosyvoice.eventBusEnv" -}}
{{- if .Values.nats.existingSecret }}
- name: EVENT_BUS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.existingSecret }}
      key: {{ .Values.nats.existingSecretKey }}
{{- else }}
- name: EVENT_BUS_URL
  value: {{ required "nats.url (or nats.existingSecret) is required" .Values.nats.url | quote }}
{{- end }}
- name: JETSTREAM_STREAM
  value: {{ .Values.nats.stream | quote }}
{{- /* One owner of the stream's configuration: the NACK Stream object when there is one. */}}
- name: JETSTREAM_MANAGE_STREAM
  value: {{ not .Values.nack.enabled | quote }}
{{- end -}}

{{- define "cosyvoice.webhookSecretEnv" -}}
- name: WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      {{- if .Values.webhook.secret }}
      name: {{ include "cosyvoice.credentialsSecretName" . }}
      key: webhook-secret
      {{- else }}
      name: {{ required "webhook.existingSecret (or webhook.secret) is required" .Values.webhook.existingSecret }}
      key: {{ .Values.webhook.existingSecretKey }}
      {{- end }}
{{- end -}}

{{- define "cosyvoice.apiKeyEnv" -}}
{{- if or .Values.auth.apiKey .Values.auth.existingSecret }}
- name: API_KEY
  valueFrom:
    secretKeyRef:
      {{- if .Values.auth.apiKey }}
      name: {{ include "cosyvoice.credentialsSecretName" . }}
      key: api-key
      {{- else }}
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKey }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* S3 credentials: static keys (chart Secret), an existing Secret, or none at all when
the pod's identity grants access (IRSA, workload identity). */}}
{{- define "cosyvoice.objectStoreEnv" -}}
{{- $static := and .Values.objectStore.accessKeyId .Values.objectStore.secretAccessKey }}
{{- if or $static .Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ ternary (include "cosyvoice.credentialsSecretName" .) .Values.objectStore.existingSecret (not (empty $static)) }}
      key: {{ ternary "aws-access-key-id" .Values.objectStore.accessKeyIdKey (not (empty $static)) }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ ternary (include "cosyvoice.credentialsSecretName" .) .Values.objectStore.existingSecret (not (empty $static)) }}
      key: {{ ternary "aws-secret-access-key" .Values.objectStore.secretAccessKeyKey (not (empty $static)) }}
{{- end }}
{{- end -}}

{{/* Writable scratch space under a read-only root filesystem: /tmp (uploads, audio
encoding) and the home directory (library caches). */}}
{{- define "cosyvoice.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: home
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "cosyvoice.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/cosyvoice
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
{{- $v := .Values }}
{{- range $name, $consumer := $v.jetstreamSource.consumers }}
{{- if and $v.jetstreamSource.enabled $consumer.enabled }}
{{- $function := get $v.functions $consumer.function }}
{{- if not $function.enabled }}
{{- fail (printf "jetstreamSource.consumers.%s feeds functions.%s, which is disabled" $name $consumer.function) }}
{{- end }}
{{- if le (int $v.jetstreamSource.ackWaitSeconds) (int $function.timeoutSeconds) }}
{{- fail (printf "jetstreamSource.ackWaitSeconds (%v) must exceed functions.%s.timeoutSeconds (%v), or events are delivered again while they are handled" $v.jetstreamSource.ackWaitSeconds $consumer.function $function.timeoutSeconds) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.objectStore.accessKeyId (not $v.objectStore.secretAccessKey) }}
{{- fail "objectStore.accessKeyId needs objectStore.secretAccessKey" }}
{{- end }}
{{- $max := int $v.knative.maxRevisionTimeoutSeconds }}
{{- $timeouts := dict "router.timeoutSeconds" $v.router.timeoutSeconds "router.responseStartTimeoutSeconds" $v.router.responseStartTimeoutSeconds "predictor.timeoutSeconds" $v.predictor.timeoutSeconds "functions.render.timeoutSeconds" $v.functions.render.timeoutSeconds "functions.webhook.timeoutSeconds" $v.functions.webhook.timeoutSeconds }}
{{- range $name, $seconds := $timeouts }}
{{- if gt (int $seconds) $max }}
{{- fail (printf "%s (%v) is above knative.maxRevisionTimeoutSeconds (%v): Knative refuses the revision" $name $seconds $max) }}
{{- end }}
{{- end }}
{{- if gt (int $v.router.responseStartTimeoutSeconds) (int $v.router.timeoutSeconds) }}
{{- fail "router.responseStartTimeoutSeconds must not exceed router.timeoutSeconds" }}
{{- end }}
{{- if ge (int $v.config.predictorTimeout) (int $v.router.responseStartTimeoutSeconds) }}
{{- fail (printf "config.predictorTimeout (%v) must be below router.responseStartTimeoutSeconds (%v): the router answers 503 before Knative answers 504" $v.config.predictorTimeout $v.router.responseStartTimeoutSeconds) }}
{{- end }}
{{- if gt (int $v.router.minScale) (int $v.router.maxScale) }}
{{- fail "router.minScale must not exceed router.maxScale" }}
{{- end }}
{{- if gt (int $v.predictor.minReplicas) (int $v.predictor.maxReplicas) }}
{{- fail "predictor.minReplicas must not exceed predictor.maxReplicas" }}
{{- end }}
{{- range $function := list "render" "webhook" }}
{{- $spec := get $v.functions $function }}
{{- if gt (int $spec.minScale) (int $spec.maxScale) }}
{{- fail (printf "functions.%s.minScale must not exceed functions.%s.maxScale" $function $function) }}
{{- end }}
{{- end }}
{{- $reserved := list 8008 8012 8013 8022 9090 9091 }}
{{- if has (int $v.router.port) $reserved }}
{{- fail (printf "router.port %v is reserved by Knative's queue-proxy (8008, 8012, 8013, 8022, 9090, 9091)" $v.router.port) }}
{{- end }}
{{- if has (int $v.predictor.httpPort) $reserved }}
{{- fail (printf "predictor.httpPort %v is reserved by Knative's queue-proxy (8008, 8012, 8013, 8022, 9090, 9091)" $v.predictor.httpPort) }}
{{- end }}
{{- if has (int $v.functions.port) $reserved }}
{{- fail (printf "functions.port %v is reserved by Knative's queue-proxy (8008, 8012, 8013, 8022, 9090, 9091)" $v.functions.port) }}
{{- end }}
{{- if and $v.nack.enabled $v.nats.existingSecret (not $v.nack.servers) }}
{{- fail "nack.servers is required when the NATS URL lives in nats.existingSecret" }}
{{- end }}
{{- end -}}

{{/* Labels KServe puts on the pods of an InferenceService (its own selector).
Usage: include "cosyvoice.predictorPodLabels" $inferenceServiceName */}}
{{- define "cosyvoice.predictorPodLabels" -}}
serving.kserve.io/inferenceservice: {{ . }}
component: predictor
{{- end -}}

{{/* Egress rules of one workload's NetworkPolicy: DNS, then each service it needs.
Usage: include "cosyvoice.egressRules" (dict "ctx" $ "needs" (list "mongodb" "nats") "knative" $knativePeer) */}}
{{- define "cosyvoice.egressRules" -}}
{{- $v := .ctx.Values -}}
{{- $egress := $v.networkPolicy.egress -}}
{{- $rules := list -}}
{{- if $egress.dns -}}
{{- $rules = append $rules (dict "ports" (list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP"))) -}}
{{- end -}}
{{- range $need := .needs -}}
{{- if has $need (list "mongodb" "nats" "modelDownload") -}}
{{- $spec := get $egress $need -}}
{{- $rules = append $rules (include "cosyvoice.egressRule" (dict "ports" $spec.ports "to" $spec.to) | fromYaml) -}}
{{- else if eq $need "objectStore" -}}
{{- $ports := $egress.objectStore.ports -}}
{{- if not $ports -}}
{{- $url := urlParse $v.objectStore.url -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) -}}
{{- $ports = list (ternary (atoi $port) (ternary 443 80 (eq $url.scheme "s3s")) (ne $port "")) -}}
{{- end -}}
{{- $rules = append $rules (include "cosyvoice.egressRule" (dict "ports" $ports "to" $egress.objectStore.to) | fromYaml) -}}
{{- else if eq $need "knative" -}}
{{- $rules = append $rules (dict "to" (list $.knative)) -}}
{{- else if eq $need "webhooks" -}}
{{- $peers := list -}}
{{- range $cidr := $egress.webhooks.cidrs -}}
{{- $except := list -}}
{{- if not $v.webhook.allowPrivate -}}
{{- range $range := $egress.webhooks.except -}}
{{- if eq (contains ":" $cidr) (contains ":" $range) -}}
{{- $except = append $except $range -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $block := dict "cidr" $cidr -}}
{{- if $except -}}
{{- $_ := set $block "except" $except -}}
{{- end -}}
{{- $peers = append $peers (dict "ipBlock" $block) -}}
{{- end -}}
{{- $rules = append $rules (include "cosyvoice.egressRule" (dict "ports" $egress.webhooks.ports "to" $peers) | fromYaml) -}}
{{- end -}}
{{- end -}}
{{- $rules = concat $rules $egress.extra -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* One egress rule: TCP ports, to the given peers (none: any address). */}}
{{- define "cosyvoice.egressRule" -}}
{{- $rule := dict "ports" (list) -}}
{{- range .ports -}}
{{- $_ := set $rule "ports" (append $rule.ports (dict "port" (int .) "protocol" "TCP")) -}}
{{- end -}}
{{- with .to -}}
{{- $_ := set $rule "to" . -}}
{{- end -}}
{{- toYaml $rule -}}
{{- end -}}
