{{/*
Linkerd objects of one service.

Outbound (client side, parent = the Service; read by the callers' proxies):
  - "<svc>-default": every call gets the route timeout (timeout.linkerd.io/request);
  - "<svc>-reads": idempotent reads, retried (retry.linkerd.io/*) only where the mesh is the one
    layer that retries the hop: calls into the edge (REST GET), and calls between services when
    mesh.retries.internal=mesh. Never on load shedding (503/429, resource-exhausted).
  - failure accrual: annotations on the Service ("sharemesh.linkerdServiceAnnotations"), except
    the edge's (its 503s are load shedding or an upstream outage, not a broken edge pod).

Inbound (internal services, mesh.authorizationPolicies; read by the service's own proxy): a Server
on the gRPC port with proxyProtocol gRPC. Once a Server exists, every request to that port is
denied unless a route authorizes it, and a gRPC Server uses GRPCRoutes only (HTTPRoutes parented
to it are ignored). So three GRPCRoutes parented to the Server, each with its own
AuthorizationPolicy:
  - "<svc>-health": grpc.health.v1.Health, for NetworkAuthentication <release>-probes (the
    kubelet's gRPC probes come from the node, without a mesh identity);
  - "<svc>-internal" (catalog, payment): the internal RPCs by exact name, for reservation's
    identity only;
  - "<svc>-public": the rest of the service's gRPC service, for the identities that call it
    (the edge; reservation for payment's ListPayments).
*/}}
{{- define "sharemesh.linkerdServiceAnnotations" -}}
{{- $cb := .Values.mesh.circuitBreaker -}}
balancer.linkerd.io/failure-accrual: consecutive
balancer.linkerd.io/failure-accrual-consecutive-max-failures: {{ int $cb.consecutiveErrors | toString | quote }}
balancer.linkerd.io/failure-accrual-consecutive-min-penalty: {{ $cb.baseEjectionTime | quote }}
balancer.linkerd.io/failure-accrual-consecutive-max-penalty: {{ $cb.maxEjectionTime | quote }}
balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: {{ $cb.jitterRatio | toString | quote }}
{{- end -}}

{{/* The gRPC service a context serves (package.Service). */}}
{{- define "sharemesh.grpcService" -}}
{{- printf "sharemesh.%s.v1.%sService" .name (title .name) -}}
{{- end -}}

{{- define "sharemesh.linkerd" -}}
{{- $root := .root -}}
{{- $m := $root.Values.mesh -}}
{{- $full := include "sharemesh.componentName" . -}}
{{- $port := include "sharemesh.servicePort" . | int -}}
{{- $edge := eq .name "edge" -}}
{{- $kind := ternary "HTTPRoute" "GRPCRoute" $edge -}}
{{- $retries := ternary (int $m.retries.attempts) (include "sharemesh.meshInternalRetries" $root | int) $edge -}}
{{- if gt $retries 0 }}
apiVersion: gateway.networking.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $full }}-reads
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
  annotations:
    retry.linkerd.io/limit: {{ $retries | toString | quote }}
    retry.linkerd.io/timeout: {{ $m.retries.perTryTimeout | quote }}
    timeout.linkerd.io/request: {{ $m.timeout | quote }}
    {{- if $edge }}
    retry.linkerd.io/http: {{ $m.retries.httpStatuses | quote }}
    {{- else }}
    retry.linkerd.io/grpc: {{ $m.retries.grpcStatuses | quote }}
    {{- end }}
spec:
  parentRefs:
    - group: core
      kind: Service
      name: {{ $full }}
      port: {{ $port }}
  rules:
    - matches:
        {{- if $edge }}
        # REST reads. (gRPC through the edge is POST: not matched; the edge retries its own
        # upstream calls.)
        - method: GET
        {{- else }}
        {{- range $m := include "sharemesh.readMethodsOf" . | fromJsonArray }}
        - method:
            type: Exact
            service: {{ (splitList "/" $m) | first }}
            method: {{ (splitList "/" $m) | last }}
        {{- end }}
        {{- end }}
      backendRefs:
        - name: {{ $full }}
          port: {{ $port }}
---
{{- end }}
apiVersion: gateway.networking.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $full }}-default
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
  annotations:
    # A timeout, no retries (commands are not idempotent; reads are retried by one layer only).
    timeout.linkerd.io/request: {{ $m.timeout | quote }}
spec:
  parentRefs:
    - group: core
      kind: Service
      name: {{ $full }}
      port: {{ $port }}
  rules:
    - backendRefs:
        - name: {{ $full }}
          port: {{ $port }}
{{- if and $m.authorizationPolicies (not $edge) }}
{{- $server := printf "%s-grpc" $full }}
{{- $grpcService := include "sharemesh.grpcService" . }}
{{- $internal := index (include "sharemesh.internalMethods" $root | fromYaml) .name | default list }}
{{- $callers := include "sharemesh.callersOf" . | fromJson }}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: {{ $server }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" . | nindent 6 }}
  port: grpc
  proxyProtocol: gRPC
---
# The kubelet's gRPC probes (grpc.health.v1.Health/Check).
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: {{ $full }}-health
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $server }}
  rules:
    - matches:
        - method:
            type: Exact
            service: grpc.health.v1.Health
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {{ $full }}-health
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: GRPCRoute
    name: {{ $full }}-health
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: NetworkAuthentication
      name: {{ include "sharemesh.fullname" $root }}-probes
---
# The service's public RPCs (its gRPC service; the internal RPCs match the more specific route below).
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: {{ $full }}-public
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $server }}
  rules:
    - matches:
        - method:
            type: Exact
            service: {{ $grpcService }}
{{- with $callers.public }}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: {{ $full }}-public
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ | nindent 4 }}
spec:
  identityRefs:
    {{- range $caller := . }}
    - kind: ServiceAccount
      name: {{ include "sharemesh.componentName" (dict "root" $root "name" $caller) }}
    {{- end }}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {{ $full }}-public
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ | nindent 4 }}
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: GRPCRoute
    name: {{ $full }}-public
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: MeshTLSAuthentication
      name: {{ $full }}-public
{{- end }}
{{- if $internal }}
---
# Internal RPCs: reservation only (the edge never forwards them).
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: {{ $full }}-internal
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $server }}
  rules:
    - matches:
        {{- range $m := $internal }}
        - method:
            type: Exact
            service: {{ (splitList "/" $m) | first }}
            method: {{ (splitList "/" $m) | last }}
        {{- end }}
{{- with $callers.internal }}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: {{ $full }}-internal
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ | nindent 4 }}
spec:
  identityRefs:
    {{- range $caller := . }}
    - kind: ServiceAccount
      name: {{ include "sharemesh.componentName" (dict "root" $root "name" $caller) }}
    {{- end }}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {{ $full }}-internal
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ | nindent 4 }}
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: GRPCRoute
    name: {{ $full }}-internal
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: MeshTLSAuthentication
      name: {{ $full }}-internal
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
