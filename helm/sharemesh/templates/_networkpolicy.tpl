{{/*
NetworkPolicy of one sharemesh service: only the edge accepts traffic from outside the
namespace; every service accepts the release's own services (on any port: mesh proxies use
extra ones, e.g. Linkerd's inbound 4143) and /metrics scrapers (plus the mesh's metrics port:
Istio's merged 15020, the Linkerd proxy's 4191); egress is DNS, the release's pods, NATS,
PostgreSQL, the mesh control plane, the OTLP collector, the identity provider (auth.issuer) and
networkPolicies.extraEgress. The
kubelet's probes come from the pod's node, which NetworkPolicies always allow.
*/}}
{{/* The ports scrapers may reach: the app's metrics and the mesh's own. */}}
{{- define "sharemesh.metricsPorts" -}}
- port: metrics
  protocol: TCP
{{- if eq .Values.mesh.provider "istio" }}
# Istio merges the app's and the sidecar's metrics on 15020 (prometheus.io/port is rewritten).
- port: 15020
  protocol: TCP
{{- else if eq .Values.mesh.provider "linkerd" }}
# The Linkerd proxy's admin port (linkerd-viz's Prometheus scrapes it).
- port: 4191
  protocol: TCP
{{- end }}
{{- end -}}

{{/* TCP ports of nats.external.url (one URL or a comma-separated list; 4222 when a URL has none). */}}
{{- define "sharemesh.natsExternalPorts" -}}
{{- $ports := list -}}
{{- range $u := splitList "," .Values.nats.external.url -}}
{{- $u = trim $u -}}
{{- if $u -}}
{{- $hostPort := splitList ":" (urlParse $u).host -}}
{{- $ports = append $ports (ternary (last $hostPort) "4222" (gt (len $hostPort) 1) | int) -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}
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
        {{- if eq $root.Values.mesh.provider "linkerd" }}
        # A meshed client (e.g. a meshed ingress controller) connects to the proxy's inbound port.
        - port: 4143
          protocol: TCP
        {{- end }}
      {{- with $np.edgeFrom }}
      from:
        {{- toYaml . | nindent 8 }}
    # `helm test`: the release's test Pod.
    - ports:
        - port: http
          protocol: TCP
      from:
        - podSelector:
            matchLabels:
              {{- include "sharemesh.selectorLabels" (dict "root" $root "name" "test") | nindent 14 }}
      {{- end }}
    {{- end }}
    - from:
        - podSelector:
            {{- include "sharemesh.meshPodSelector" . | nindent 12 }}
    - ports:
        {{- include "sharemesh.metricsPorts" $root | nindent 8 }}
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
    - ports:
        {{- range $p := include "sharemesh.natsExternalPorts" $root | fromJsonArray }}
        - port: {{ int $p }}
          protocol: TCP
        {{- end }}
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
    {{- if include "sharemesh.oidc" $root }}
    # The identity provider (auth.issuer): its discovery document and signing keys.
    - ports:
        {{- range $p := include "sharemesh.identityProviderPorts" $root | fromJsonArray }}
        - port: {{ int $p }}
          protocol: TCP
        {{- end }}
      {{- with $np.identityProvider.to }}
      to:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    {{- with $np.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
