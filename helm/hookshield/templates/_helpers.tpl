{{/* Names and labels. */}}
{{- define "hookshield.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookshield.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookshield.labels" -}}
{{ include "hookshield.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* "true" when the sidecar runs as a native sidecar (init container, restartPolicy: Always). */}}
{{- define "hookshield.native" -}}
{{- if eq (toString .Values.nativeSidecar) "auto" -}}
{{- semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
{{- else -}}
{{- toString .Values.nativeSidecar -}}
{{- end -}}
{{- end -}}

{{/*
The hookshield sidecar container. A platform chart includes it in its own pod spec:
  initContainers:            # when native (Kubernetes >= 1.29)
    - {{ include "hookshield.sidecar" . | nindent 6 }}
  volumes:
    {{- include "hookshield.volumes" . | nindent 4 }}
*/}}
{{- define "hookshield.sidecar" -}}
name: hookshield
image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if eq (include "hookshield.native" .) "true" }}
restartPolicy: Always
{{- end }}
args: ["run", "--config", "/etc/hookshield/hookshield.yaml", "--grace", {{ .Values.grace | quote }}]
env:
  - {name: HOOKSHIELD_LISTEN_HOST, value: "127.0.0.1"}
  - {name: HOOKSHIELD_LISTEN_PORT, value: {{ .Values.ports.data | quote }}}
  - {name: HOOKSHIELD_ADMIN_HOST, value: "0.0.0.0"}
  - {name: HOOKSHIELD_ADMIN_PORT, value: {{ .Values.ports.admin | quote }}}
  - {name: HOOKSHIELD_SQLITE_PATH, value: /var/lib/hookshield/queue.db}
  {{- with .Values.adminToken.existingSecret }}
  - name: HOOKSHIELD_ADMIN_TOKEN
    valueFrom: {secretKeyRef: {name: {{ . }}, key: {{ $.Values.adminToken.key }}}}
  {{- end }}
  {{- if .Values.redis.existingSecret }}
  - name: HOOKSHIELD_REDIS_URL
    valueFrom: {secretKeyRef: {name: {{ .Values.redis.existingSecret }}, key: {{ .Values.redis.key }}}}
  {{- else if .Values.redis.url }}
  - {name: HOOKSHIELD_REDIS_URL, value: {{ .Values.redis.url | quote }}}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  - {name: admin, containerPort: {{ .Values.ports.admin }}, protocol: TCP}
startupProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 1
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: admin}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: admin}
  periodSeconds: 5
  failureThreshold: 2
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {drop: [ALL]}
  seccompProfile: {type: RuntimeDefault}
volumeMounts:
  # The ConfigMap is mounted as a directory (never subPath), so updates reach the file.
  - {name: hookshield-config, mountPath: /etc/hookshield, readOnly: true}
  - {name: hookshield-queue, mountPath: /var/lib/hookshield}
  - {name: hookshield-tmp, mountPath: /tmp}
  {{- if .Values.secrets.existingSecret }}
  - {name: hookshield-secrets, mountPath: /var/run/secrets/hookshield, readOnly: true}
  {{- end }}
{{- end -}}

{{/* The volumes the sidecar mounts. */}}
{{- define "hookshield.volumes" -}}
- name: hookshield-config
  configMap: {name: {{ include "hookshield.fullname" . }}-config}
- name: hookshield-queue
  emptyDir: {sizeLimit: {{ .Values.queue.sizeLimit }}}
- name: hookshield-tmp
  emptyDir: {sizeLimit: 16Mi}
{{- with .Values.secrets.existingSecret }}
- name: hookshield-secrets
  secret: {secretName: {{ . }}}
{{- end }}
{{- end -}}
