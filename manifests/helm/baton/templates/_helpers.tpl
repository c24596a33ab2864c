{{/* Name of every object of the release (truncated to the 63 of a label value). */}}
{{- define "baton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "baton.webhookName" -}}
{{- printf "%s-webhook" (include "baton.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* As manifests/webhook labels its objects, plus the release. */}}
{{- define "baton.selectorLabels" -}}
app.kubernetes.io/name: baton-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "baton.labels" -}}
{{ include "baton.selectorLabels" . }}
app.kubernetes.io/part-of: baton
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "baton.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "baton.sidecarImage" -}}
{{- default (printf "ghcr.io/baton-dev/baton-sidecar:%s" .Chart.AppVersion) .Values.sidecar.image -}}
{{- end -}}

{{/* The Secret that holds the serving certificate (tls.crt, tls.key). */}}
{{- define "baton.tlsSecret" -}}
{{- if eq .Values.certificates.mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required in mode existingSecret" .Values.certificates.existingSecret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "baton.webhookName" .) -}}
{{- end -}}
{{- end -}}

{{/* The webhook's DNS names, as the API server dials it. */}}
{{- define "baton.dnsNames" -}}
{{- $svc := include "baton.webhookName" . -}}
{{- list (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson -}}
{{- end -}}

{{/* Namespaces whose pods and workloads the webhooks see: those labelled
baton.dev/injection=enabled, never the listed ones nor the release's own. */}}
{{- define "baton.namespaceSelector" -}}
{{- $excluded := concat .Values.excludedNamespaces (list .Release.Namespace) | uniq -}}
{{- $sel := deepCopy .Values.namespaceSelector -}}
{{- $labels := merge (dict "baton.dev/injection" "enabled") (get $sel "matchLabels" | default dict) -}}
{{- $_ := set $sel "matchLabels" $labels -}}
{{- $exprs := concat (get $sel "matchExpressions" | default list) (list (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded)) -}}
{{- $_ := set $sel "matchExpressions" $exprs -}}
{{- toYaml $sel -}}
{{- end -}}

{{/* The other namespaces (but the excluded ones): workloads there that opt
in are warned that their pods will not be injected. */}}
{{- define "baton.namespaceNotEnabledSelector" -}}
{{- $excluded := concat .Values.excludedNamespaces (list .Release.Namespace) | uniq -}}
{{- $exprs := list (dict "key" "baton.dev/injection" "operator" "NotIn" "values" (list "enabled")) (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $excluded) -}}
{{- toYaml (dict "matchExpressions" $exprs) -}}
{{- end -}}

{{- define "baton.checkValues" -}}
{{- $modes := list "selfSigned" "certManager" "existingSecret" -}}
{{- if not (has .Values.certificates.mode $modes) -}}
{{- fail (printf "certificates.mode must be one of %v, not %q" $modes .Values.certificates.mode) -}}
{{- end -}}
{{- if not (has .Values.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "failurePolicy must be Fail or Ignore, not %q" .Values.failurePolicy) -}}
{{- end -}}
{{- if and (eq .Values.certificates.mode "existingSecret") (not .Values.certificates.existingSecret.caBundle) -}}
{{- fail "certificates.existingSecret.caBundle (the PEM of the CA) is required in mode existingSecret" -}}
{{- end -}}
{{- end -}}
