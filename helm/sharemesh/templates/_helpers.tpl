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

{{/*
The topology (contexts, calls, streams) is written once, in mesh/src/topology.rs; `make topology`
copies it to files/topology.json (a Rust test fails when the copy is stale). Every list of
services below comes from it: contexts that keep data first, then the edge.
*/}}
{{- define "sharemesh.topology" -}}
{{- .Files.Get "files/topology.json" -}}
{{- end -}}

{{/* The bounded contexts (each keeps a database and a stream). */}}
{{- define "sharemesh.contexts" -}}
{{- $names := list -}}
{{- range $c := (include "sharemesh.topology" . | fromJson).contexts -}}
{{- if $c.keepsData -}}{{- $names = append $names $c.name -}}{{- end -}}
{{- end -}}
{{- join " " $names -}}
{{- end -}}

{{/* Every sharemesh service: the contexts, then the edge. */}}
{{- define "sharemesh.serviceNames" -}}
{{- $names := list -}}
{{- range $c := (include "sharemesh.topology" . | fromJson).contexts -}}
{{- $names = append $names $c.name -}}
{{- end -}}
{{- join " " $names -}}
{{- end -}}

{{/* One service's row of the topology, as JSON; .name is the service. */}}
{{- define "sharemesh.topologyOf" -}}
{{- range $c := (include "sharemesh.topology" .root | fromJson).contexts -}}
{{- if eq $c.name $.name -}}{{- toJson $c -}}{{- end -}}
{{- end -}}
{{- end -}}

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
{{- if (include "sharemesh.topologyOf" . | fromJson).keepsData -}}
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

{{/* "true" in identity-provider mode (auth.issuer set): user tokens from an OIDC provider, no SHAREMESH_JWT_SECRET. */}}
{{- define "sharemesh.oidc" -}}
{{- if .Values.auth.issuer -}}true{{- end -}}
{{- end -}}

{{/* TCP ports of the identity provider (networkPolicies.identityProvider.ports, else those of auth.issuer and auth.jwksUri), as JSON. */}}
{{- define "sharemesh.identityProviderPorts" -}}
{{- $ports := list -}}
{{- range $p := .Values.networkPolicies.identityProvider.ports -}}
{{- $ports = append $ports (int $p) -}}
{{- end -}}
{{- if not $ports -}}
{{- range $u := list .Values.auth.issuer .Values.auth.jwksUri -}}
{{- if or (hasPrefix "https://" $u) (hasPrefix "http://" $u) -}}
{{- $hostPort := splitList ":" (urlParse $u).host -}}
{{- $ports = append $ports (ternary (last $hostPort) (ternary "443" "80" (hasPrefix "https://" $u)) (gt (len $hostPort) 1) | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/*
The most PostgreSQL connections the services on the in-chart PostgreSQL can hold at once, as JSON
{"total": N, "terms": ["catalog 7 pods", ...]}: per service on it, (its most replicas - the HPA's
maxReplicas, or replicas - plus the one pod a rolling update surges) x database.pool.
*/}}
{{- define "sharemesh.pgWorstCase" -}}
{{- $root := . -}}
{{- $pool := int .Values.database.pool -}}
{{- $total := 0 -}}
{{- $terms := list -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $name -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" $ctx) "postgres") -}}
{{- $most := ternary (int $svc.autoscaling.maxReplicas) (include "sharemesh.replicas" $ctx | int) (eq (include "sharemesh.hpa" $ctx) "true") -}}
{{- $pods := add $most 1 -}}
{{- $total = add $total (mul $pods $pool) -}}
{{- $terms = append $terms (printf "%s %d" $name $pods) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "total" $total "terms" $terms) -}}
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

{{/* Services a component calls synchronously (each at its topology "addrVar", SHAREMESH_<NAME>_ADDR): its "calls" in the topology. */}}
{{- define "sharemesh.upstreams" -}}
{{- join " " (include "sharemesh.topologyOf" . | fromJson).calls -}}
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
{{- $root := . -}}
{{- /* helm install enforces Chart.yaml's kubeVersion; helm template and SDK renders do not. */ -}}
{{- if not (semverCompare .Chart.KubeVersion .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "this chart needs Kubernetes %s (Chart.yaml kubeVersion); the target is %s" .Chart.KubeVersion .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $stop := include "sharemesh.stopSeconds" . | int -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $stop -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.drainDelay + config.shutdownGrace (%ds), or in-flight calls are killed" (int .Values.terminationGracePeriodSeconds) $stop) -}}
{{- end -}}
{{- if and (include "sharemesh.usesPostgres" .) (eq .Values.postgresql.mode "external") (not .Values.secrets.existingSecret) (not .Values.postgresql.external.host) -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $name -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $name)) "postgres") (not $svc.databaseUrl) -}}
{{- fail (printf "services.%s uses postgres with postgresql.mode=external: set postgresql.external.host or services.%s.databaseUrl" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (include "sharemesh.usesPostgres" .) (eq .Values.postgresql.mode "external") (not .Values.secrets.existingSecret) (not .Values.postgresql.auth.password) -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $name -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $name)) "postgres") (not $svc.databaseUrl) -}}
{{- fail (printf "services.%s uses postgres with postgresql.mode=external: set postgresql.auth.password (the external server's), services.%s.databaseUrl or secrets.existingSecret" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* SQLite has one writer: replicas and autoscaling are refused, not silently clamped (the schema says so too). */ -}}
{{- range $name := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $name -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $name)) "sqlite") -}}
{{- if and (not (kindIs "invalid" $svc.replicas)) (ne (int $svc.replicas) 1) -}}
{{- fail (printf "services.%s.replicas=%v, but %s keeps SQLite (one writer: exactly 1 replica). Use services.%s.storage=postgres to scale it, or leave replicas unset" $name $svc.replicas $name $name) -}}
{{- end -}}
{{- if and $svc.autoscaling (eq (toString $svc.autoscaling.enabled) "true") -}}
{{- fail (printf "services.%s.autoscaling.enabled=true, but %s keeps SQLite (one writer: never autoscaled). Use services.%s.storage=postgres to autoscale it" $name $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* A disabled service must not leave enabled ones pointing at it. */ -}}
{{- range $name := include "sharemesh.serviceNames" . | splitList " " -}}
{{- if (index $root.Values.services $name).enabled -}}
{{- range $up := include "sharemesh.upstreams" (dict "root" $root "name" $name) | splitList " " | compact -}}
{{- if not (index $root.Values.services $up).enabled -}}
{{- fail (printf "services.%s.enabled=false, but services.%s calls it (%s): disable %s too, or keep %s" $up $name (include "sharemesh.topologyOf" (dict "root" $root "name" $up) | fromJson).addrVar $name $up) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* Identity: the services' own refusals, at render time (the schema says so too). */ -}}
{{- $a := .Values.auth -}}
{{- if $a.issuer -}}
{{- if $a.jwtSecret -}}
{{- fail "auth.jwtSecret is set together with auth.issuer: user tokens come either from the identity provider or from the HS256 key (the services refuse both); leave auth.jwtSecret empty" -}}
{{- end -}}
{{- else -}}
{{- range $k := list "jwksUri" "audience" -}}
{{- if get $a $k -}}
{{- fail (printf "auth.%s is set but auth.issuer is not: set the identity provider's issuer too (or leave auth.%s empty for HS256 mode)" $k $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $pair := splitList "," $a.roleMap -}}
{{- if eq (trim (last (splitList "=" $pair))) "service" -}}
{{- fail (printf "auth.roleMap maps %q to service: no provider role may become the service role (it belongs to the calls between services); map to customer, host or admin" (trim (first (splitList "=" $pair)))) -}}
{{- end -}}
{{- end -}}
{{- if $a.istioRequestAuthentication -}}
{{- if ne .Values.mesh.provider "istio" -}}
{{- fail (printf "auth.istioRequestAuthentication=true needs mesh.provider=istio (it renders an Istio RequestAuthentication; mesh.provider is %s): the services verify the provider's tokens themselves, leave it false" .Values.mesh.provider) -}}
{{- end -}}
{{- if not $a.issuer -}}
{{- fail "auth.istioRequestAuthentication=true needs auth.issuer (the identity provider whose tokens the edge's sidecar verifies)" -}}
{{- end -}}
{{- end -}}
{{- /* PostgreSQL connections: the services' worst case must fit the in-chart server. */ -}}
{{- if include "sharemesh.postgresInternal" . -}}
{{- $worst := include "sharemesh.pgWorstCase" . | fromJson -}}
{{- $pg := .Values.postgresql -}}
{{- $need := add (int $worst.total) (int $pg.connectionMargin) -}}
{{- if gt $need (int $pg.maxConnections) -}}
{{- fail (printf "the services on the in-chart PostgreSQL could open %d connections ((%s) pods x database.pool=%d; per service its most replicas + 1 rolling-update surge pod) + postgresql.connectionMargin=%d = %d, above postgresql.maxConnections=%d: lower database.pool or the services' autoscaling.maxReplicas / replicas, or raise postgresql.maxConnections" (int $worst.total) (join " + " $worst.terms) (int .Values.database.pool) (int $pg.connectionMargin) $need (int $pg.maxConnections)) -}}
{{- end -}}
{{- end -}}
{{- /* Retries: never retry load shedding; keep the worst case bounded. */ -}}
{{- $r := .Values.mesh.retries -}}
{{- range $c := splitList "," $r.retryOn -}}
{{- if has (trim $c) (list "5xx" "gateway-error" "retriable-status-codes" "503" "429" "resource-exhausted" "envoy-ratelimited") -}}
{{- fail (printf "mesh.retries.retryOn contains %q: it would retry load shedding (REST 503/429, gRPC RESOURCE_EXHAUSTED). Use connect-failure,refused-stream,reset,unavailable (and 502,504)" (trim $c)) -}}
{{- end -}}
{{- end -}}
{{- range $c := splitList "," $r.grpcStatuses -}}
{{- if eq (trim $c) "resource-exhausted" -}}
{{- fail "mesh.retries.grpcStatuses contains resource-exhausted: that is load shedding and must not be retried" -}}
{{- end -}}
{{- end -}}
{{- range $c := splitList "," (toString $r.httpStatuses) -}}
{{- $c = trim $c -}}
{{- if or (eq $c "5xx") (eq $c "503") (eq $c "429") (eq $c "4xx") (and (contains "-" $c) (le (atoi (first (splitList "-" $c))) 503) (ge (atoi (last (splitList "-" $c))) 503)) (and (contains "-" $c) (le (atoi (first (splitList "-" $c))) 429) (ge (atoi (last (splitList "-" $c))) 429)) -}}
{{- fail (printf "mesh.retries.httpStatuses contains %q: the edge sheds load with 503 (or 429), which must not be retried. Use 502,504" $c) -}}
{{- end -}}
{{- end -}}
{{- $worst := include "sharemesh.worstCaseAttempts" . | int -}}
{{- if gt $worst (int $r.maxAttemptsPerCall) -}}
{{- fail (printf "one client call could reach a service %d times (mesh.retries.attempts=%d, config.client.retries=%d, mesh.retries.internal=%s), above mesh.retries.maxAttemptsPerCall=%d: lower the retries" $worst (int $r.attempts) (int .Values.config.client.retries) $r.internal (int $r.maxAttemptsPerCall)) -}}
{{- end -}}
{{- /* JetStream: stream replicas and sizes that the NATS servers can hold. */ -}}
{{- $n := .Values.nats -}}
{{- $age := toString $n.streams.maxAge -}}
{{- if and (ne $age "0") (lt (include "sharemesh.seconds" $age | int) 60) -}}
{{- fail (printf "nats.streams.maxAge=%s: use \"0\" (keep forever) or at least 1m (consumers that are down longer would miss events; the services refuse it)" $age) -}}
{{- end -}}
{{- if include "sharemesh.natsInternal" . -}}
{{- if and (not (kindIs "invalid" $n.streams.replicas)) (gt (int $n.streams.replicas) (int $n.replicas)) -}}
{{- fail (printf "nats.streams.replicas=%d, but the in-chart NATS has nats.replicas=%d servers: a stream cannot have more replicas than servers" (int $n.streams.replicas) (int $n.replicas)) -}}
{{- end -}}
{{- $store := include "sharemesh.natsMaxFileStore" . | int64 -}}
{{- $volume := include "sharemesh.bytes" $n.persistence.size | int64 -}}
{{- if gt $store $volume -}}
{{- fail (printf "nats.jetstream.maxFileStore (%d bytes) exceeds the JetStream volume nats.persistence.size (%s = %d bytes)" $store (toString $n.persistence.size) $volume) -}}
{{- end -}}
{{- $each := include "sharemesh.streamMaxBytes" . | int64 -}}
{{- $streams := include "sharemesh.streamCount" . | int64 -}}
{{- if gt (mul $each $streams) $store -}}
{{- fail (printf "nats.streams.maxBytes=%d x %d streams = %d bytes does not fit the JetStream store of one server (%d bytes, nats.jetstream.maxFileStore / nats.persistence.size): lower maxBytes or grow the volume" $each $streams (mul $each $streams) $store) -}}
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
{{- /* The proxy outlives the app's whole stop (drain + grace), as Istio's terminationDrainDuration does:
in-flight calls and their outbound calls keep their proxy until the app has finished. */}}
config.alpha.linkerd.io/proxy-wait-before-exit-seconds: {{ include "sharemesh.stopSeconds" . | quote }}
config.linkerd.io/default-inbound-policy: {{ .Values.mesh.linkerd.defaultInboundPolicy | quote }}
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


{{/*
Who calls what (the allow-graph the mesh policies and the chart tests share). The internal RPCs
(no google.api.http annotation in proto/) are for reservation only; the edge never forwards them.
*/}}
{{- define "sharemesh.internalMethods" -}}
catalog:
  - sharemesh.catalog.v1.CatalogService/HoldListing
  - sharemesh.catalog.v1.CatalogService/ConfirmHold
  - sharemesh.catalog.v1.CatalogService/ReleaseHold
payment:
  - sharemesh.payment.v1.PaymentService/ApprovePayment
{{- end -}}

{{/* Callers of a context's public methods and of its internal ones (enabled services only), as JSON {"public": [...], "internal": [...]}. */}}
{{- define "sharemesh.callersOf" -}}
{{- $root := .root -}}
{{- $public := list -}}
{{- $internal := list -}}
{{- range $caller := include "sharemesh.serviceNames" $root | splitList " " -}}
{{- if (index $root.Values.services $caller).enabled -}}
{{- if has $.name (include "sharemesh.upstreams" (dict "root" $root "name" $caller) | splitList " ") -}}
{{- $public = append $public $caller -}}
{{- if ne $caller "edge" -}}{{- $internal = append $internal $caller -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* reservation calls catalog only through its internal methods (holds), payment through both. */ -}}
{{- if eq .name "catalog" -}}{{- $public = without $public "reservation" -}}{{- end -}}
{{- toJson (dict "public" $public "internal" $internal) -}}
{{- end -}}

{{/* A Kubernetes quantity (5Gi, 500Mi, 2G, 1073741824) in bytes. */}}
{{- define "sharemesh.bytes" -}}
{{- $q := toString . -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $n := regexFind "^[0-9]+" $q -}}
{{- $u := trimPrefix $n $q -}}
{{- if not $n -}}{{- fail (printf "%q is not a size in bytes (use e.g. 5Gi or 500Mi)" $q) -}}{{- end -}}
{{- if $u -}}
{{- if not (hasKey $units $u) -}}{{- fail (printf "%q: unknown unit %q (use Ki, Mi, Gi, Ti, K, M, G or T)" $q $u) -}}{{- end -}}
{{- mul (int64 $n) (int64 (index $units $u)) -}}
{{- else -}}
{{- int64 $n -}}
{{- end -}}
{{- end -}}

{{/* jetstream.max_file_store of each in-chart NATS server, in bytes. */}}
{{- define "sharemesh.natsMaxFileStore" -}}
{{- $j := .Values.nats.jetstream -}}
{{- if $j.maxFileStore -}}
{{- include "sharemesh.bytes" $j.maxFileStore -}}
{{- else -}}
{{- div (mul (include "sharemesh.bytes" .Values.nats.persistence.size | int64) 9) 10 -}}
{{- end -}}
{{- end -}}

{{/* The JetStream streams the services create: one per context that has one (the topology's "stream"), plus the dead-letter stream. */}}
{{- define "sharemesh.streamCount" -}}
{{- $n := 1 -}}
{{- range $c := (include "sharemesh.topology" . | fromJson).contexts -}}
{{- if $c.stream -}}{{- $n = add $n 1 -}}{{- end -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{/* SHAREMESH_STREAM_REPLICAS. */}}
{{- define "sharemesh.streamReplicas" -}}
{{- $s := .Values.nats.streams -}}
{{- if not (kindIs "invalid" $s.replicas) -}}{{ int $s.replicas }}
{{- else if include "sharemesh.natsInternal" . -}}{{ int .Values.nats.replicas }}
{{- else -}}1
{{- end -}}
{{- end -}}

{{/* SHAREMESH_STREAM_MAX_BYTES. */}}
{{- define "sharemesh.streamMaxBytes" -}}
{{- $s := .Values.nats.streams -}}
{{- if not (kindIs "invalid" $s.maxBytes) -}}{{ int64 $s.maxBytes }}
{{- else if include "sharemesh.natsInternal" . -}}{{ div (include "sharemesh.natsMaxFileStore" . | int64) (include "sharemesh.streamCount" . | int64) }}
{{- else -}}0
{{- end -}}
{{- end -}}

{{/* Replicas of a Deployment when its HPA is off (SQLite services are StatefulSets with 1). */}}
{{- define "sharemesh.replicas" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if kindIs "invalid" $svc.replicas -}}2{{- else -}}{{ int $svc.replicas }}{{- end -}}
{{- end -}}

{{/* "true" when the service gets a HorizontalPodAutoscaler (PostgreSQL or the edge; autoscaling not off). */}}
{{- define "sharemesh.hpa" -}}
{{- $svc := index .root.Values.services .name -}}
{{- if ne (include "sharemesh.storage" .) "sqlite" -}}
{{- if ne (toString $svc.autoscaling.enabled) "false" -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* SHAREMESH_CLIENT_RETRIES: the services' own retries, 0 when the mesh owns the internal hops. */}}
{{- define "sharemesh.clientRetries" -}}
{{- if and (ne .Values.mesh.provider "none") (eq .Values.mesh.retries.internal "mesh") -}}0{{- else -}}{{ int .Values.config.client.retries }}{{- end -}}
{{- end -}}

{{/* Retries the mesh makes of an idempotent call on a hop between sharemesh services. */}}
{{- define "sharemesh.meshInternalRetries" -}}
{{- if and (ne .Values.mesh.provider "none") (eq .Values.mesh.retries.internal "mesh") -}}{{ int .Values.mesh.retries.attempts }}{{- else -}}0{{- end -}}
{{- end -}}

{{/*
The most times one client call can reach one service: (calls into the edge) x (the edge's call to
a context) x (reservation's call to catalog/payment, for the edge's idempotent calls to
reservation that call them). Each factor is 1 + the retries of the one layer that retries that hop
(connect-failure/refused-stream retries never reach a server and are not counted). The chart tests
recompute it from the rendered objects.
*/}}
{{- define "sharemesh.worstCaseAttempts" -}}
{{- $entry := 1 -}}
{{- if ne .Values.mesh.provider "none" -}}{{- $entry = add 1 (int .Values.mesh.retries.attempts) -}}{{- end -}}
{{- $hop := mul (add 1 (include "sharemesh.clientRetries" . | int)) (add 1 (include "sharemesh.meshInternalRetries" . | int)) -}}
{{- /* Through the edge: entry x edge -> context; commands reach reservation once from the edge
(not retried at the entry) but reservation's idempotent saga steps add one more hop. */ -}}
{{- max (mul $entry $hop) (mul $hop $hop) -}}
{{- end -}}
