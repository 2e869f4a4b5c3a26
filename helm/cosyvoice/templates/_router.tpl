{{/* The router container, shared by the Knative Service and the Deployment.
Usage: include "cosyvoice.routerContainer" (dict "ctx" $ "knative" true)
Knative picks the port from the single containerPort (named http1) and sets PORT
itself, so probes carry no port there.
*/}}
{{- define "cosyvoice.routerContainer" -}}
{{- $ctx := .ctx -}}
{{- $router := $ctx.Values.router -}}
- name: router
  image: {{ include "cosyvoice.image" (dict "ctx" $ctx "image" $ctx.Values.image) }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  args:
    {{- toYaml $router.args | nindent 4 }}
  ports:
    - name: {{ ternary "http1" "http" .knative }}
      containerPort: {{ $router.port }}
      protocol: TCP
  {{- include "cosyvoice.envFrom" $ctx | nindent 2 }}
  env:
    {{- if not .knative }}
    - name: PORT
      value: {{ $router.port | quote }}
    {{- end }}
    - name: WORKER_CONCURRENCY
      value: {{ ternary "0" (toString $router.workerConcurrency) $ctx.Values.functions.render.enabled | quote }}
    {{- include "cosyvoice.secretEnv" $ctx | trim | nindent 4 }}
    {{- with $router.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  readinessProbe:
    {{- include "cosyvoice.httpProbe" (dict "path" "/health" "port" (ternary "" "http" .knative) "timings" $router.readinessProbe) | nindent 4 }}
  livenessProbe:
    {{- include "cosyvoice.httpProbe" (dict "path" "/health" "port" (ternary "" "http" .knative) "timings" $router.livenessProbe) | nindent 4 }}
  resources:
    {{- toYaml $router.resources | nindent 4 }}
  securityContext:
    {{- toYaml $ctx.Values.containerSecurityContext | nindent 4 }}
{{- end -}}

{{- define "cosyvoice.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
