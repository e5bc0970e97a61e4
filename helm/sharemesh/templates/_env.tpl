{{/*
Environment of the sharemesh services. Non-secret values only: SHAREMESH_JWT_SECRET (HS256 mode),
SHAREMESH_SERVICE_SECRET and the PostgreSQL URLs come from the Secret (see _service.tpl).
*/}}

{{- define "sharemesh.sharedEnv" -}}
{{- $c := .Values.config -}}
SHAREMESH_METRICS_ADDR: "0.0.0.0:9090"
SHAREMESH_DATA_DIR: "/data"
SHAREMESH_LOG: {{ $c.log | quote }}
SHAREMESH_LOG_FORMAT: {{ $c.logFormat | quote }}
{{- with $c.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
SHAREMESH_DRAIN_DELAY: {{ $c.drainDelay | quote }}
SHAREMESH_SHUTDOWN_GRACE: {{ $c.shutdownGrace | quote }}
SHAREMESH_OUTBOX_POLL: {{ $c.outboxPoll | quote }}
SHAREMESH_OUTBOX_RETENTION: {{ $c.outboxRetention | quote }}
SHAREMESH_INBOX_MAX_DELIVER: {{ $c.inboxMaxDeliver | quote }}
SHAREMESH_INBOX_BACKOFF: {{ $c.inboxBackoff | quote }}
SHAREMESH_CLIENT_TIMEOUT: {{ $c.client.timeout | quote }}
SHAREMESH_CLIENT_RETRIES: {{ include "sharemesh.clientRetries" . | quote }}
SHAREMESH_CLIENT_RETRY_BUDGET: {{ $c.client.retryBudget | quote }}
SHAREMESH_CLIENT_BREAKER_FAILURES: {{ $c.client.breakerFailures | quote }}
SHAREMESH_CLIENT_BREAKER_OPEN: {{ $c.client.breakerOpen | quote }}
SHAREMESH_CLIENT_CONCURRENCY: {{ $c.client.concurrency | quote }}
{{- with .Values.auth }}
{{- if .issuer }}
SHAREMESH_OIDC_ISSUER: {{ .issuer | quote }}
{{- with .jwksUri }}
SHAREMESH_OIDC_JWKS_URI: {{ . | quote }}
{{- end }}
{{- with .audience }}
SHAREMESH_OIDC_AUDIENCE: {{ . | quote }}
{{- end }}
SHAREMESH_OIDC_ROLES_CLAIM: {{ .rolesClaim | quote }}
SHAREMESH_OIDC_ROLE_MAP: {{ .roleMap | quote }}
SHAREMESH_OIDC_SUBJECT_CLAIM: {{ .subjectClaim | quote }}
SHAREMESH_OIDC_LEEWAY: {{ .leeway | quote }}
SHAREMESH_OIDC_REFRESH: {{ .refresh | quote }}
SHAREMESH_OIDC_REFETCH: {{ .refetch | quote }}
{{- else }}
SHAREMESH_JWT_ISSUER: {{ .jwtIssuer | quote }}
{{- end }}
{{- end }}
NATS_URL: {{ include "sharemesh.natsUrl" . | quote }}
SHAREMESH_STREAM_REPLICAS: {{ include "sharemesh.streamReplicas" . | quote }}
SHAREMESH_STREAM_MAX_AGE: {{ .Values.nats.streams.maxAge | toString | quote }}
SHAREMESH_STREAM_MAX_BYTES: {{ include "sharemesh.streamMaxBytes" . | quote }}
{{- range $k, $v := $c.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* One service's own variables: listen address, upstreams, its settings, SQLite URL. */}}
{{- define "sharemesh.serviceEnv" -}}
{{- $root := .root -}}
{{- $svc := index .root.Values.services .name -}}
SHAREMESH_GRPC_ADDR: {{ printf "0.0.0.0:%s" (include "sharemesh.servingPort" .) | quote }}
{{- range $up := include "sharemesh.upstreams" . | splitList " " | compact }}
{{ (include "sharemesh.topologyOf" (dict "root" $root "name" $up) | fromJson).addrVar }}: {{ printf "http://%s:50051" (include "sharemesh.componentName" (dict "root" $root "name" $up)) | quote }}
{{- end }}
{{- if eq (include "sharemesh.storage" .) "sqlite" }}
DATABASE_URL: {{ printf "sqlite:///data/%s.db?mode=rwc" .name | quote }}
{{- else if eq (include "sharemesh.storage" .) "postgres" }}
SHAREMESH_DB_POOL: {{ $root.Values.database.pool | int | toString | quote }}
{{- end }}
{{- if eq .name "catalog" }}
SHAREMESH_HOLD_TTL: {{ $svc.holdTtl | quote }}
{{- else if eq .name "reservation" }}
SHAREMESH_AUTO_CONFIRM_KINDS: {{ $svc.autoConfirmKinds | quote }}
SHAREMESH_SAGA_STALE: {{ $svc.sagaStale | quote }}
{{- else if eq .name "payment" }}
SHAREMESH_PAYMENT_LIMIT: {{ $svc.limitMinor | int64 | toString | quote }}
{{- end }}
{{- range $k, $v := $svc.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}
