{{/*
Istio objects of one service: DestinationRule (connection pool + outlier detection from
mesh.circuitBreaker), VirtualService (timeout; retries by exactly one layer per hop),
PeerAuthentication (STRICT for internal services), AuthorizationPolicy (each RPC for exactly
its callers) and, with auth.istioRequestAuthentication, the edge's RequestAuthentication.

Every route states its retries: a route without `retries` gets Istio's default policy (2 retries
on connect-failure,refused-stream,unavailable,cancelled,503), which would stack on the services'
own retries. Reads into the edge are retried by the mesh (mesh.retries); calls between services
are retried by the services' client (config.client.retries), the mesh retrying only what never
reached a server (connect-failure, refused-stream) -- or the reverse with mesh.retries.internal=mesh.
*/}}
{{- define "sharemesh.istio" -}}
{{- $root := .root -}}
{{- $m := $root.Values.mesh -}}
{{- $cb := $m.circuitBreaker -}}
{{- $full := include "sharemesh.componentName" . -}}
{{- $host := include "sharemesh.host" . -}}
{{- $port := include "sharemesh.servicePort" . | int -}}
{{- $edge := eq .name "edge" -}}
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  host: {{ $host }}
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: {{ $cb.maxConnections }}
      http:
        http1MaxPendingRequests: {{ $cb.maxPendingRequests }}
        http2MaxRequests: {{ $cb.maxRequests }}
        {{- if gt (int $cb.maxRequestsPerConnection) 0 }}
        maxRequestsPerConnection: {{ $cb.maxRequestsPerConnection }}
        {{- end }}
        {{- if $edge }}
        # The edge speaks HTTP/1.1 (REST, gRPC-Web) and h2c (gRPC) on one port: keep the caller's.
        useClientProtocol: true
        {{- end }}
    outlierDetection:
      {{- if $edge }}
      # The edge answers 503 when it sheds load or an upstream is down: not the edge pod's fault.
      # Count only failures of the pod itself (connect failures, resets, timeouts).
      consecutive5xxErrors: 0
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: {{ $cb.consecutiveErrors }}
      {{- else }}
      # gRPC statuses count as Envoy maps them: UNAVAILABLE 503, INTERNAL 500, DEADLINE_EXCEEDED
      # 504 count; RESOURCE_EXHAUSTED (429, load shedding) does not.
      consecutive5xxErrors: {{ $cb.consecutiveErrors }}
      {{- end }}
      interval: {{ $cb.interval }}
      baseEjectionTime: {{ $cb.baseEjectionTime }}
      maxEjectionPercent: {{ $cb.maxEjectionPercent }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  hosts:
    - {{ $host }}
  http:
    {{- $meshReads := ternary (int $m.retries.attempts) (include "sharemesh.meshInternalRetries" $root | int) $edge }}
    {{- if gt $meshReads 0 }}
    # Idempotent reads (the contracts' Get/List methods; REST GET on the edge), retried by the mesh.
    - name: reads
      match:
        {{- if $edge }}
        - method:
            exact: GET
        {{- end }}
        {{- range $m := include "sharemesh.readMethodsOf" . | fromJsonArray }}
        - uri:
            exact: /{{ $m }}
        {{- end }}
      route:
        - destination:
            host: {{ $host }}
            port:
              number: {{ $port }}
      timeout: {{ $m.timeout }}
      retries:
        attempts: {{ $meshReads }}
        perTryTimeout: {{ $m.retries.perTryTimeout }}
        retryOn: {{ $m.retries.retryOn | quote }}
    {{- end }}
    # Everything else: retried only when the request never reached the service.
    - name: default
      route:
        - destination:
            host: {{ $host }}
            port:
              number: {{ $port }}
      timeout: {{ $m.timeout }}
      # No perTryTimeout: an expired attempt must not be sent again.
      retries:
        attempts: {{ $m.retries.attempts }}
        {{- if gt (int $m.retries.attempts) 0 }}
        retryOn: connect-failure,refused-stream
        {{- end }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" . | nindent 6 }}
  mtls:
    mode: {{ ternary $m.istio.edgeMtlsMode $m.istio.mtlsMode $edge }}
  {{- if and (not $edge) (eq $m.istio.mtlsMode "STRICT") }}
  # Prometheus outside the mesh may still scrape /metrics.
  portLevelMtls:
    9090:
      mode: PERMISSIVE
  {{- end }}
{{- if and $edge $root.Values.auth.istioRequestAuthentication $root.Values.auth.issuer }}
---
# The identity provider's tokens, verified by the edge's sidecar too: a request carrying a token
# that is invalid for the provider (signature, issuer, audience, expiry) is refused with 401 before
# it reaches the edge; a request without a token passes (no AuthorizationPolicy requires one: the
# edge answers 401 itself where a token is needed). The token is forwarded, so the edge and the
# services still verify it and read its roles.
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" . | nindent 6 }}
  jwtRules:
    - issuer: {{ $root.Values.auth.issuer | quote }}
      {{- /* Unset: istiod reads jwks_uri from the issuer's OpenID discovery document. */}}
      {{- with $root.Values.auth.jwksUri }}
      jwksUri: {{ . | quote }}
      {{- end }}
      {{- with $root.Values.auth.audience }}
      audiences:
        - {{ . | quote }}
      {{- end }}
      forwardOriginalToken: true
{{- end }}
{{- if and $m.authorizationPolicies (not $edge) }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" . | nindent 6 }}
  action: ALLOW
  rules:
    {{- $internal := index (include "sharemesh.internalMethods" $root | fromYaml) .name | default list }}
    {{- $callers := include "sharemesh.callersOf" . | fromJson }}
    {{- with $callers.public }}
    # The service's public RPCs, for the identities that call them.
    - from:
        - source:
            principals:
              {{- range $n := . }}
              - {{ printf "%s/ns/%s/sa/%s" $m.istio.trustDomain $root.Release.Namespace (include "sharemesh.componentName" (dict "root" $root "name" $n)) | quote }}
              {{- end }}
      {{- if $internal }}
      to:
        - operation:
            notPaths:
              {{- range $p := $internal }}
              - /{{ $p }}
              {{- end }}
      {{- end }}
    {{- end }}
    {{- if and $internal $callers.internal }}
    # The internal RPCs: reservation only (the edge never forwards them).
    - from:
        - source:
            principals:
              {{- range $n := $callers.internal }}
              - {{ printf "%s/ns/%s/sa/%s" $m.istio.trustDomain $root.Release.Namespace (include "sharemesh.componentName" (dict "root" $root "name" $n)) | quote }}
              {{- end }}
      to:
        - operation:
            paths:
              {{- range $p := $internal }}
              - /{{ $p }}
              {{- end }}
    {{- end }}
    # /metrics for any scraper (the NetworkPolicy narrows who). The kubelet's probes never reach
    # this policy: Istio rewrites them to the sidecar agent (port 15020), which calls the app locally.
    - to:
        - operation:
            ports: ["9090"]
{{- end }}
{{- end -}}
