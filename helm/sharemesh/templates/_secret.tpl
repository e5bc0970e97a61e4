{{/*
The data of the Secret <release>-secrets: the JWT key (HS256 mode), the service key and, when a service keeps PostgreSQL, the
passwords and URLs. Each value comes from values.yaml, else from the live Secret (lookup, so
upgrades keep generated values), else is generated. Computed once per render and remembered, so
the Secret and every pod's checksum/secret see the same values (even where lookup cannot read
the cluster and the values are freshly generated, e.g. `helm template`).
*/}}
{{- define "sharemesh.secretData" -}}
{{- if not (hasKey .Values "_sharemeshSecretData") -}}
{{- $root := . -}}
{{- $name := include "sharemesh.secretName" . -}}
{{- $live := (lookup "v1" "Secret" .Release.Namespace $name) | default dict -}}
{{- $liveData := (get $live "data") | default dict -}}
{{- $pg := .Values.postgresql -}}
{{- $data := dict -}}
{{- /* HS256 mode only: with an identity provider the services refuse a JWT key. */ -}}
{{- if not (include "sharemesh.oidc" .) -}}
{{- $_ := set $data "SHAREMESH_JWT_SECRET" (.Values.auth.jwtSecret | default ((get $liveData "SHAREMESH_JWT_SECRET") | default "" | b64dec) | default (randAlphaNum 48)) -}}
{{- end -}}
{{- /* Both modes: the key of the calls between services (and of page tokens), one for every replica. */ -}}
{{- $_ := set $data "SHAREMESH_SERVICE_SECRET" (.Values.auth.serviceSecret | default ((get $liveData "SHAREMESH_SERVICE_SECRET") | default "" | b64dec) | default (randAlphaNum 48)) -}}
{{- if include "sharemesh.usesPostgres" . -}}
{{- if eq $pg.mode "internal" -}}
{{- $_ := set $data "POSTGRES_PASSWORD" ($pg.auth.adminPassword | default ((get $liveData "POSTGRES_PASSWORD") | default "" | b64dec) | default (randAlphaNum 32)) -}}
{{- end -}}
{{- range $ctx := include "sharemesh.contexts" . | splitList " " -}}
{{- $svc := index $root.Values.services $ctx -}}
{{- if and $svc.enabled (eq (include "sharemesh.storage" (dict "root" $root "name" $ctx)) "postgres") -}}
{{- $url := "" -}}
{{- if eq $pg.mode "internal" -}}
{{- $key := printf "POSTGRES_PASSWORD_%s" (upper $ctx) -}}
{{- $password := $pg.auth.password | default ((get $liveData $key) | default "" | b64dec) | default (randAlphaNum 32) -}}
{{- $_ := set $data $key $password -}}
{{- $url = printf "postgres://%s:%s@%s:5432/%s" (include "sharemesh.pgRole" (dict "root" $root "name" $ctx) | include "sharemesh.urlEscape") (include "sharemesh.urlEscape" $password) (include "sharemesh.componentName" (dict "root" $root "name" "postgresql")) $ctx -}}
{{- else if $pg.auth.password -}}
{{- $url = printf "postgres://%s:%s@%s:%d/%s" (include "sharemesh.urlEscape" $pg.auth.username) (include "sharemesh.urlEscape" $pg.auth.password) $pg.external.host (int $pg.external.port) $ctx -}}
{{- with $pg.external.params }}{{ $url = printf "%s?%s" $url . }}{{ end -}}
{{- end -}}
{{- $_ := set $data (printf "DATABASE_URL_%s" (upper $ctx)) ($svc.databaseUrl | default $url) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "_sharemeshSecretData" $data -}}
{{- end -}}
{{- toJson (get .Values "_sharemeshSecretData") -}}
{{- end -}}

{{/* What the pods hash into checksum/secret: the rendered data, or the live existingSecret (when readable). */}}
{{- define "sharemesh.secretChecksum" -}}
{{- if .Values.secrets.existingSecret -}}
{{- $live := (lookup "v1" "Secret" .Release.Namespace .Values.secrets.existingSecret) | default dict -}}
{{- printf "%s\n%s" .Values.secrets.existingSecret (toJson ((get $live "data") | default dict)) | sha256sum -}}
{{- else -}}
{{- include "sharemesh.secretData" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* The role a service logs in as on the in-chart PostgreSQL: <postgresql.auth.username>_<service>. */}}
{{- define "sharemesh.pgRole" -}}
{{- printf "%s_%s" .root.Values.postgresql.auth.username .name -}}
{{- end -}}

{{/* Percent-encodes a URL userinfo part: urlquery, with its "+" for a space made "%20" (a literal "+" is already "%2B"). */}}
{{- define "sharemesh.urlEscape" -}}
{{- urlquery . | replace "+" "%20" -}}
{{- end -}}
