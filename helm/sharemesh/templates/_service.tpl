{{/*
"sharemesh.service" renders everything one sharemesh service needs; templates/<service>.yaml call
it with (dict "root" $ "name" "<service>"):

  ServiceAccount, ConfigMap (its own env), Deployment - or StatefulSet with a PVC when it keeps
  SQLite (one replica: SQLite has a single writer) -, Service, HorizontalPodAutoscaler (Deployments
  only), PodDisruptionBudget, NetworkPolicy, and the Istio or Linkerd objects (_istio.tpl,
  _linkerd.tpl).
*/}}
{{- define "sharemesh.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := index $root.Values.services $name -}}
{{- if $svc.enabled -}}
{{- $ctx := dict "root" $root "name" $name -}}
{{- $full := include "sharemesh.componentName" $ctx -}}
{{- $storage := include "sharemesh.storage" $ctx -}}
{{- $sqlite := eq $storage "sqlite" -}}
{{- $port := include "sharemesh.servingPort" $ctx | int -}}
{{- $portName := include "sharemesh.servingPortName" $ctx -}}
{{- $hpa := include "sharemesh.hpa" $ctx -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
automountServiceAccountToken: false
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
data:
  {{- include "sharemesh.serviceEnv" $ctx | nindent 2 }}
---
apiVersion: apps/v1
kind: {{ ternary "StatefulSet" "Deployment" $sqlite }}
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
spec:
  {{- if $sqlite }}
  # SQLite is single-writer: exactly one replica, never autoscaled (other values are refused).
  replicas: 1
  serviceName: {{ $full }}-headless
  podManagementPolicy: OrderedReady
  updateStrategy:
    type: RollingUpdate
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Retain
  {{- else }}
  {{- if not $hpa }}
  replicas: {{ include "sharemesh.replicas" $ctx }}
  {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "sharemesh.labels" $ctx | nindent 8 }}
        {{- with include "sharemesh.meshPodLabels" $root | trim }}{{ . | nindent 8 }}{{- end }}
      annotations:
        checksum/config: {{ printf "%s\n%s" (include "sharemesh.sharedEnv" $root) (include "sharemesh.serviceEnv" $ctx) | sha256sum }}
        # The Secret's content as rendered (generated values included): pods restart together
        # whenever it changes, so replicas never run with different keys.
        checksum/secret: {{ include "sharemesh.secretChecksum" $root }}
        {{- if $root.Values.metricsAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: "9090"
        prometheus.io/path: /metrics
        {{- end }}
        {{- with include "sharemesh.meshPodAnnotations" $root | trim }}{{ . | nindent 8 }}{{- end }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $full }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      # Must cover SHAREMESH_DRAIN_DELAY + SHAREMESH_SHUTDOWN_GRACE (checked at render time).
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with include "sharemesh.topologySpread" $ctx | trim }}{{ . | nindent 6 }}{{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ $name }}
          image: {{ include "sharemesh.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["serve", {{ $name | quote }}]
          ports:
            - name: {{ $portName }}
              containerPort: {{ $port }}
              protocol: TCP
            - name: metrics
              containerPort: 9090
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "sharemesh.envConfigMapName" $root }}
            - configMapRef:
                name: {{ $full }}
          env:
            {{- $oidc := include "sharemesh.oidc" $root }}
            {{- if not $oidc }}
            - name: SHAREMESH_JWT_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ include "sharemesh.secretName" $root }}
                  key: SHAREMESH_JWT_SECRET
            {{- end }}
            - name: SHAREMESH_SERVICE_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ include "sharemesh.secretName" $root }}
                  key: SHAREMESH_SERVICE_SECRET
                  {{- if and $root.Values.secrets.existingSecret (not $oidc) }}
                  # HS256 mode: an existing Secret without this key still works (the services
                  # derive the service key from SHAREMESH_JWT_SECRET).
                  optional: true
                  {{- end }}
            {{- if eq $storage "postgres" }}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "sharemesh.secretName" $root }}
                  key: DATABASE_URL_{{ upper $name }}
            {{- end }}
          # grpc.health.v1.Health, service "" (the whole server). NOT_SERVING from SIGTERM on.
          startupProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: 2
            failureThreshold: 60
          readinessProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $port }}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 4
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /data
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if not $sqlite }}
        - name: data
          emptyDir:
            sizeLimit: 64Mi
        {{- end }}
  {{- if $sqlite }}
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: data
        labels:
          {{- include "sharemesh.selectorLabels" $ctx | nindent 10 }}
      spec:
        accessModes: [ReadWriteOnce]
        {{- with $svc.persistence.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $svc.persistence.size }}
  {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
  {{- $annotations := dict }}
  {{- if eq $name "edge" }}{{ $annotations = merge $annotations $svc.service.annotations }}{{ end }}
  {{- /* No failure accrual on the edge: its 503s (load shedding, an upstream down) say nothing about the edge pod. */}}
  {{- if and (eq $root.Values.mesh.provider "linkerd") (ne $name "edge") }}{{ $annotations = merge $annotations (include "sharemesh.linkerdServiceAnnotations" $root | fromYaml) }}{{ end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if eq $name "edge" }}
  type: {{ $svc.service.type }}
  {{- if and (ne $svc.service.type "ClusterIP") $svc.service.externalTrafficPolicy }}
  externalTrafficPolicy: {{ $svc.service.externalTrafficPolicy }}
  {{- end }}
  {{- if and (eq $svc.service.type "LoadBalancer") $svc.service.loadBalancerSourceRanges }}
  loadBalancerSourceRanges:
    {{- toYaml $svc.service.loadBalancerSourceRanges | nindent 4 }}
  {{- end }}
  {{- else }}
  type: ClusterIP
  {{- end }}
  selector:
    {{- include "sharemesh.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ $portName }}
      port: {{ include "sharemesh.servicePort" $ctx }}
      targetPort: {{ $portName }}
      protocol: TCP
      {{- if eq $name "edge" }}
      {{- with $svc.service.appProtocol }}
      appProtocol: {{ . }}
      {{- end }}
      {{- if and (has $svc.service.type (list "NodePort" "LoadBalancer")) $svc.service.nodePort }}
      nodePort: {{ $svc.service.nodePort }}
      {{- end }}
      {{- else }}
      appProtocol: grpc
      {{- end }}
    - name: metrics
      port: 9090
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- if $sqlite }}
---
# The StatefulSet's governing Service (stable pod DNS names); clients use the Service above.
apiVersion: v1
kind: Service
metadata:
  name: {{ $full }}-headless
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "sharemesh.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ $portName }}
      port: {{ $port }}
      targetPort: {{ $portName }}
      protocol: TCP
      appProtocol: grpc
{{- end }}
{{- if $hpa }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $full }}
  minReplicas: {{ $svc.autoscaling.minReplicas }}
  maxReplicas: {{ $svc.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $svc.autoscaling.targetCPUUtilizationPercentage }}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
        - type: Percent
          value: 50
          periodSeconds: 60
{{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "sharemesh.labels" $ctx | nindent 4 }}
spec:
  # maxUnavailable, not minAvailable: a one-replica (SQLite) service can still be drained from a node.
  maxUnavailable: {{ $svc.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "sharemesh.selectorLabels" $ctx | nindent 6 }}
{{- if $root.Values.networkPolicies.enabled }}
---
{{ include "sharemesh.serviceNetworkPolicy" $ctx }}
{{- end }}
{{- if eq $root.Values.mesh.provider "istio" }}
---
{{ include "sharemesh.istio" $ctx }}
{{- else if eq $root.Values.mesh.provider "linkerd" }}
---
{{ include "sharemesh.linkerd" $ctx }}
{{- end }}
{{- end }}
{{- end -}}
