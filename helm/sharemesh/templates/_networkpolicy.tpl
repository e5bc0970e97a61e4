{{/*
NetworkPolicy of one sharemesh service: only the edge accepts traffic from outside the
namespace; every service accepts the release's own services (on any port: mesh proxies use
extra ones) and /metrics scrapers; egress is DNS, the release's pods, NATS, PostgreSQL, the
mesh control plane, the OTLP collector and networkPolicies.extraEgress.
*/}}
{{- define "sharemesh.serviceNetworkPolicy" -}}
{{- $root := .root -}}
{{- $np := $root.Values.networkPolicies -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "sharemesh.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- if eq .name "edge" }}
    # The public door.
    - ports:
        - port: http
          protocol: TCP
      {{- with $np.edgeFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    - from:
        - podSelector:
            {{- include "sharemesh.meshPodSelector" . | nindent 12 }}
    - ports:
        - port: metrics
          protocol: TCP
      from:
        - podSelector: {}
        {{- with $np.metricsFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  egress:
    {{- include "sharemesh.dnsEgress" $root | nindent 4 }}
    - to:
        - podSelector:
            {{- include "sharemesh.meshPodSelector" . | nindent 12 }}
    {{- if include "sharemesh.natsInternal" $root }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "sharemesh.selectorLabels" (dict "root" $root "name" "nats") | nindent 14 }}
    {{- else }}
    {{- $hostPort := splitList ":" (urlParse $root.Values.nats.external.url).host }}
    - ports:
        - port: {{ ternary (last $hostPort) "4222" (gt (len $hostPort) 1) | int }}
          protocol: TCP
    {{- end }}
    {{- if include "sharemesh.usesPostgres" $root }}
    {{- if eq $root.Values.postgresql.mode "internal" }}
    - to:
        - podSelector:
            matchLabels:
              {{- include "sharemesh.selectorLabels" (dict "root" $root "name" "postgresql") | nindent 14 }}
    {{- else }}
    - ports:
        - port: {{ $root.Values.postgresql.external.port }}
          protocol: TCP
    {{- end }}
    {{- end }}
    {{- if eq $root.Values.mesh.provider "istio" }}
    - to:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $root.Values.mesh.istio.namespace }}
    {{- else if eq $root.Values.mesh.provider "linkerd" }}
    - to:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ $root.Values.mesh.linkerd.namespace }}
    {{- end }}
    {{- if $root.Values.config.otlpEndpoint }}
    - ports:
        - port: {{ $np.otlpPort }}
          protocol: TCP
    {{- end }}
    {{- with $np.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
