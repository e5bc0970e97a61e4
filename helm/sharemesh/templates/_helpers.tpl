{{/*
Names, labels and the small decisions every template shares. Every object name comes from here.
Per-service helpers take a dict: (dict "root" $ "name" "catalog").
*/}}

{{- define "sharemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>, or <release>-sharemesh when the release name does not say sharemesh. */}}
{{- define "sharemesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sharemesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The bounded contexts (each keeps a database), then the edge. */}}
{{- define "sharemesh.contexts" -}}catalog reservation payment message view{{- end -}}
{{- define "sharemesh.serviceNames" -}}catalog reservation payment message view edge{{- end -}}

{{/* Name of one component's objects: <fullname>-<component>. */}}
{{- define "sharemesh.componentName" -}}
{{- printf "%s-%s" (include "sharemesh.fullname" .root) .name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "sharemesh.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "sharemesh.fullname" .)) -}}
{{- end -}}

{{- define "sharemesh.envConfigMapName" -}}
{{- printf "%s-env" (include "sharemesh.fullname" .) -}}
{{- end -}}

{{/* Standard labels; .name is the component. */}}
{{- define "sharemesh.labels" -}}
helm.sh/chart: {{ include "sharemesh.chart" .root }}
{{ include "sharemesh.selectorLabels" . }}
app.kubernetes.io/part-of: sharemesh
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "sharemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sharemesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Selects the pods of every enabled sharemesh service of this release (not NATS, PostgreSQL, tests). */}}
{{- define "sharemesh.meshPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "sharemesh.name" .root }}
  app.kubernetes.io/instance: {{ .root.Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [{{ include "sharemesh.serviceNames" .root | splitList " " | join ", " }}]
{{- end -}}

{{- define "sharemesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* sqlite | postgres for a context; "" for the edge (it keeps no data). */}}
{{- define "sharemesh.storage" -}}
{{- if ne .name "edge" -}}
{{- $svc := index .root.Values.services .name -}}
{{- $svc.storage | default .root.Values.storage.default -}}
{{- end -}}
{{- end -}}

{{/* "true" when an enabled context keeps its data in PostgreSQL. */}}
{{- define "sharemesh.usesPostgres" -}}
{{- $root := . -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- if and (index $root.Values.services $name).enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $name)) "postgres") -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sharemesh.postgresInternal" -}}
{{- if and (include "sharemesh.usesPostgres" .) (eq .Values.postgresql.mode "internal") -}}true{{- end -}}
{{- end -}}

{{- define "sharemesh.natsInternal" -}}
{{- if not .Values.nats.external.url -}}true{{- end -}}
{{- end -}}

{{- define "sharemesh.natsUrl" -}}
{{- if .Values.nats.external.url -}}
{{- .Values.nats.external.url -}}
{{- else -}}
{{- printf "nats://%s:4222" (include "sharemesh.componentName" (dict "root" . "name" "nats")) -}}
{{- end -}}
{{- end -}}

{{/* The port a service serves gRPC (and, for the edge, REST) on, and its name. */}}
{{- define "sharemesh.servingPort" -}}
{{- if eq .name "edge" -}}8080{{- else -}}50051{{- end -}}
{{- end -}}
{{- define "sharemesh.servingPortName" -}}
{{- if eq .name "edge" -}}http{{- else -}}grpc{{- end -}}
{{- end -}}
{{- define "sharemesh.servicePort" -}}
{{- if eq .name "edge" -}}{{ .root.Values.services.edge.service.port }}{{- else -}}50051{{- end -}}
{{- end -}}

{{/* Services a component calls synchronously (SHAREMESH_<NAME>_ADDR). */}}
{{- define "sharemesh.upstreams" -}}
{{- if eq .name "edge" -}}catalog reservation payment message view
{{- else if eq .name "reservation" -}}catalog payment
{{- end -}}
{{- end -}}

{{- define "sharemesh.host" -}}
{{- printf "%s.%s.svc.%s" (include "sharemesh.componentName" .) .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* Whole seconds (rounded up) of a duration such as 500ms, 5s, 2m, 1h. */}}
{{- define "sharemesh.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}{{ div (add (trimSuffix "ms" $d | int) 999) 1000 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | int }}
{{- else if hasSuffix "m" $d -}}{{ mul (trimSuffix "m" $d | int) 60 }}
{{- else if hasSuffix "h" $d -}}{{ mul (trimSuffix "h" $d | int) 3600 }}
{{- else -}}{{ $d | int }}
{{- end -}}
{{- end -}}

{{/* drainDelay + shutdownGrace in seconds: how long a pod may take to stop cleanly. */}}
{{- define "sharemesh.stopSeconds" -}}
{{- add (include "sharemesh.seconds" .Values.config.drainDelay | int) (include "sharemesh.seconds" .Values.config.shutdownGrace | int) -}}
{{- end -}}

{{/* Refuse settings that cannot work together, with a message that says what to change. */}}
{{- define "sharemesh.validate" -}}
{{- $stop := include "sharemesh.stopSeconds" . | int -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $stop -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.drainDelay + config.shutdownGrace (%ds), or in-flight calls are killed" (int .Values.terminationGracePeriodSeconds) $stop) -}}
{{- end -}}
{{- if and (include "sharemesh.usesPostgres" .) (eq .Values.postgresql.mode "external") (not .Values.secrets.existingSecret) (not .Values.postgresql.external.host) -}}
{{- $root := . -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $name -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $name)) "postgres") (not $svc.databaseUrl) -}}
{{- fail (printf "services.%s uses postgres with postgresql.mode=external: set postgresql.external.host or services.%s.databaseUrl" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations and labels that enrol a sharemesh pod in the chosen mesh. */}}
{{- define "sharemesh.meshPodLabels" -}}
{{- if eq .Values.mesh.provider "istio" }}
sidecar.istio.io/inject: "true"
{{- end }}
{{- end -}}

{{- define "sharemesh.meshPodAnnotations" -}}
{{- if eq .Values.mesh.provider "istio" }}
proxy.istio.io/config: '{"holdApplicationUntilProxyStarts": true, "terminationDrainDuration": "{{ include "sharemesh.stopSeconds" . }}s"}'
{{- with .Values.mesh.skipOutboundPorts }}
traffic.sidecar.istio.io/excludeOutboundPorts: {{ . | quote }}
{{- end }}
{{- else if eq .Values.mesh.provider "linkerd" }}
linkerd.io/inject: enabled
config.alpha.linkerd.io/proxy-wait-before-exit-seconds: {{ include "sharemesh.seconds" .Values.config.drainDelay | quote }}
{{- with .Values.mesh.skipOutboundPorts }}
config.linkerd.io/skip-outbound-ports: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Keeps infrastructure pods (NATS, PostgreSQL, tests) out of the mesh even in injected namespaces. */}}
{{- define "sharemesh.noMeshLabels" -}}
{{- if eq .Values.mesh.provider "istio" }}
sidecar.istio.io/inject: "false"
{{- end }}
{{- end -}}
{{- define "sharemesh.noMeshAnnotations" -}}
{{- if eq .Values.mesh.provider "linkerd" }}
linkerd.io/inject: disabled
{{- end }}
{{- end -}}

{{/* Topology spread constraints for one component. */}}
{{- define "sharemesh.topologySpread" -}}
{{- $ctx := . -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range $key := .root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $ctx.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $ctx.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "sharemesh.selectorLabels" $ctx | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress every sharemesh-managed pod needs: DNS. */}}
{{- define "sharemesh.dnsEgress" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end -}}

{{/*
The idempotent reads of each context ("<package>.<Service>/<Method>"), the only calls the mesh
retries. They mirror the Get/List RPCs in proto/sharemesh/<context>/v1/*.proto (the chart tests
fail when the two disagree). Exact names: Linkerd does not implement GRPCRoute regular
expression method matches.
*/}}
{{- define "sharemesh.readMethods" -}}
catalog:
  - sharemesh.catalog.v1.CatalogService/GetListing
  - sharemesh.catalog.v1.CatalogService/ListListings
reservation:
  - sharemesh.reservation.v1.ReservationService/GetReservation
  - sharemesh.reservation.v1.ReservationService/ListReservations
payment:
  - sharemesh.payment.v1.PaymentService/GetPayment
  - sharemesh.payment.v1.PaymentService/ListPayments
message:
  - sharemesh.message.v1.MessageService/ListMessages
view:
  - sharemesh.view.v1.ViewService/GetListingView
  - sharemesh.view.v1.ViewService/ListListingViews
  - sharemesh.view.v1.ViewService/GetMyPage
{{- end -}}

{{/* The read methods a component serves: its own, or for the edge every context's. */}}
{{- define "sharemesh.readMethodsOf" -}}
{{- $all := include "sharemesh.readMethods" .root | fromYaml -}}
{{- $out := list -}}
{{- range $ctx := include "sharemesh.contexts" .root | splitList " " -}}
{{- if or (eq $.name "edge") (eq $.name $ctx) -}}
{{- $out = concat $out (index $all $ctx) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
