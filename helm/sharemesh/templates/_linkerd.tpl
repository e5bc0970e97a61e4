{{/*
Linkerd objects of one service.
  outbound (client side, parent = the Service): a route for idempotent reads carrying
    retry + timeout annotations, and a catch-all route carrying only the timeout
    (GRPCRoute with the internal services' Get/List methods, HTTPRoute GET for the edge's REST);
  inbound (internal services, mesh.authorizationPolicies): a Server on the gRPC port, an
    HTTPRoute for grpc.health.v1.Health open to mesh.linkerd.probeNetworks (kubelet probes)
    and a catch-all HTTPRoute open only to this release's identities (linkerd-policy.yaml).
Failure accrual (circuit breaking) lives in annotations on the Service itself
("sharemesh.linkerdServiceAnnotations").
*/}}
{{- define "sharemesh.linkerdServiceAnnotations" -}}
{{- $cb := .Values.mesh.circuitBreaker -}}
balancer.linkerd.io/failure-accrual: consecutive
balancer.linkerd.io/failure-accrual-consecutive-max-failures: {{ int $cb.consecutiveErrors | toString | quote }}
balancer.linkerd.io/failure-accrual-consecutive-min-penalty: {{ $cb.baseEjectionTime | quote }}
balancer.linkerd.io/failure-accrual-consecutive-max-penalty: {{ $cb.maxEjectionTime | quote }}
balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio: {{ $cb.jitterRatio | toString | quote }}
{{- end -}}

{{- define "sharemesh.linkerdRetryAnnotations" -}}
{{- $r := .Values.mesh.retries -}}
retry.linkerd.io/limit: {{ int $r.attempts | toString | quote }}
retry.linkerd.io/timeout: {{ $r.perTryTimeout | quote }}
timeout.linkerd.io/request: {{ .Values.mesh.timeout | quote }}
{{- end -}}

{{- define "sharemesh.linkerd" -}}
{{- $root := .root -}}
{{- $m := $root.Values.mesh -}}
{{- $full := include "sharemesh.componentName" . -}}
{{- $port := include "sharemesh.servicePort" . | int -}}
{{- $edge := eq .name "edge" -}}
{{- $kind := ternary "HTTPRoute" "GRPCRoute" $edge -}}
apiVersion: gateway.networking.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $full }}-reads
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
  annotations:
    {{- include "sharemesh.linkerdRetryAnnotations" $root | nindent 4 }}
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
        # REST reads. (gRPC through the edge is not retried here: Linkerd's gRPC retry
        # conditions apply to GRPCRoutes; the edge retries its own upstream calls.)
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
apiVersion: gateway.networking.k8s.io/v1
kind: {{ $kind }}
metadata:
  name: {{ $full }}-default
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
  annotations:
    # Commands are not idempotent: a timeout, no retries.
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
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: {{ $full }}-grpc
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
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata:
  name: {{ $full }}-health
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $full }}-grpc
  rules:
    - matches:
        - path:
            type: PathPrefix
            value: /grpc.health.v1.Health/
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata:
  name: {{ $full }}-api
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  parentRefs:
    - group: policy.linkerd.io
      kind: Server
      name: {{ $full }}-grpc
  rules:
    - matches:
        - path:
            type: PathPrefix
            value: /
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
    group: policy.linkerd.io
    kind: HTTPRoute
    name: {{ $full }}-health
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: NetworkAuthentication
      name: {{ include "sharemesh.fullname" $root }}-probes
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: {{ $full }}-api
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  targetRef:
    group: policy.linkerd.io
    kind: HTTPRoute
    name: {{ $full }}-api
  requiredAuthenticationRefs:
    - group: policy.linkerd.io
      kind: MeshTLSAuthentication
      name: {{ include "sharemesh.fullname" $root }}-mesh
{{- end }}
{{- end -}}
