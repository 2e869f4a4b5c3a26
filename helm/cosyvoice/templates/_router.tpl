{{/* The router container, shared by the Knative Service and the Deployment.
Usage: include "cosyvoice.routerContainer" (dict "ctx" $ "knative" true)
Knative takes the serving port from the single containerPort (named http1) and passes
it to the process as PORT; probes then carry no port, Knative points them at it.
*/}}
{{- define "cosyvoice.routerContainer" -}}
{{- $ctx := .ctx -}}
{{- $router := $ctx.Values.router -}}
{{- $port := ternary "" "http" .knative -}}
- name: router
  image: {{ include "cosyvoice.image" (dict "ctx" $ctx "image" $ctx.Values.image) }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  args:
    {{- toYaml $router.args | nindent 4 }}
  ports:
    - name: {{ ternary "http1" "http" .knative }}
      containerPort: {{ $router.port }}
      protocol: TCP
  env:
    {{- include "cosyvoice.env" (dict "ctx" $ctx "workload" "router") | trim | nindent 4 }}
  startupProbe:
    {{- include "cosyvoice.httpProbe" (dict "path" "/health" "port" $port "timings" $router.startupProbe) | nindent 4 }}
  readinessProbe:
    {{- include "cosyvoice.httpProbe" (dict "path" "/health" "port" $port "timings" $router.readinessProbe) | nindent 4 }}
  livenessProbe:
    {{- include "cosyvoice.httpProbe" (dict "path" "/health" "port" $port "timings" $router.livenessProbe) | nindent 4 }}
  resources:
    {{- toYaml $router.resources | nindent 4 }}
  securityContext:
    {{- toYaml $ctx.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "cosyvoice.scratchMounts" $ctx | nindent 4 }}
    {{- with $router.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "cosyvoice.routerVolumes" -}}
volumes:
  {{- include "cosyvoice.scratchVolumes" . | nindent 2 }}
  {{- with .Values.router.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
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
