{{/*
Istio objects of one service: DestinationRule (connection pool + outlier detection from
mesh.circuitBreaker), VirtualService (timeout; retries for idempotent routes), PeerAuthentication
(STRICT for internal services) and AuthorizationPolicy (only this release's identities).
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
      consecutive5xxErrors: {{ $cb.consecutiveErrors }}
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
    # Idempotent reads (gRPC Get/List methods; REST GET on the edge): retried.
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
        attempts: {{ $m.retries.attempts }}
        perTryTimeout: {{ $m.retries.perTryTimeout }}
        retryOn: {{ $m.retries.retryOn | quote }}
    # Everything else (commands): retried only when the request never reached the service.
    - name: default
      route:
        - destination:
            host: {{ $host }}
            port:
              number: {{ $port }}
      timeout: {{ $m.timeout }}
      # No perTryTimeout here: an expired attempt of a command must not be sent again.
      retries:
        attempts: {{ $m.retries.attempts }}
        retryOn: connect-failure,refused-stream
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
    # The release's own services (their workload identities).
    - from:
        - source:
            principals:
              {{- range $n := include "sharemesh.serviceNames" $root | splitList " " }}
              {{- if (index $root.Values.services $n).enabled }}
              - {{ printf "%s/ns/%s/sa/%s" $m.istio.trustDomain $root.Release.Namespace (include "sharemesh.componentName" (dict "root" $root "name" $n)) | quote }}
              {{- end }}
              {{- end }}
    # /metrics for any scraper (the NetworkPolicy narrows who).
    - to:
        - operation:
            ports: ["9090"]
{{- end }}
{{- end -}}
