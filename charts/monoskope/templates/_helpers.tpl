{{/*
Chart name, cut to 63 characters because Kubernetes label values allow no more.
*/}}
{{- define "monoskope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, followed by the chart
name unless the release name already contains it.
*/}}
{{- define "monoskope.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, as the helm.sh/chart label shows them.
*/}}
{{- define "monoskope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "monoskope.labels" -}}
helm.sh/chart: {{ include "monoskope.chart" . }}
{{ include "monoskope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: monoskope
{{- end }}

{{/*
Labels that select the release's pods. They never change after the first
install, because a Deployment's selector is immutable.
*/}}
{{- define "monoskope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "monoskope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "monoskope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "monoskope.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap with the configuration file.
*/}}
{{- define "monoskope.configMapName" -}}
{{- printf "%s-config" (include "monoskope.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "monoskope.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The issuer URL, checked the way `monoskope` checks its configuration: https,
a host, no trailing slash, no credentials, query or fragment. The value is
never normalized, because kube-apiserver compares it byte for byte with the
tokens' `iss` claim. A bad value fails the render with a message naming it.
*/}}
{{- define "monoskope.issuer" -}}
{{- $issuer := .Values.issuer }}
{{- if not $issuer }}
{{- fail "issuer is required: set it to the exact https URL under which kube-apiservers reach Monoskope, for example --set issuer=https://monoskope.example.com" }}
{{- end }}
{{- if not (hasPrefix "https://" $issuer) }}
{{- fail (printf "issuer %q is invalid: it must use https, because kube-apiserver accepts only https issuers" $issuer) }}
{{- end }}
{{- if hasSuffix "/" $issuer }}
{{- fail (printf "issuer %q is invalid: remove the trailing '/', because kube-apiserver compares the issuer byte for byte with the tokens' iss claim" $issuer) }}
{{- end }}
{{- if regexMatch "[?#@[:space:]]" $issuer }}
{{- fail (printf "issuer %q is invalid: it must not contain credentials, a query, a fragment or white space" $issuer) }}
{{- end }}
{{- if not (include "monoskope.issuerHost" .) }}
{{- fail (printf "issuer %q is invalid: it has no host name" $issuer) }}
{{- end }}
{{- $issuer }}
{{- end }}

{{/*
Host of the issuer URL, without port or IPv6 brackets.
*/}}
{{- define "monoskope.issuerHost" -}}
{{- $host := (urlParse .Values.issuer).host }}
{{- if hasPrefix "[" $host }}
{{- regexReplaceAll "^\\[([^]]*)\\].*$" $host "${1}" }}
{{- else }}
{{- regexReplaceAll ":[0-9]*$" $host "" }}
{{- end }}
{{- end }}

{{/*
Whether the issuer's host is an IP address, which a certificate carries in
ipAddresses instead of dnsNames.
*/}}
{{- define "monoskope.issuerHostIsIP" -}}
{{- $host := include "monoskope.issuerHost" . }}
{{- if or (contains ":" $host) (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host) }}true{{ end }}
{{- end }}

{{/*
DNS names of the Service inside the cluster.
*/}}
{{- define "monoskope.serviceDNSNames" -}}
{{- $service := include "monoskope.fullname" . }}
{{- $namespace := .Release.Namespace }}
{{- list (printf "%s.%s.svc" $service $namespace) (printf "%s.%s.svc.%s" $service $namespace .Values.clusterDomain) | toJson }}
{{- end }}

{{/*
"true" when the chart creates its own CA, because certManager.issuerRef names
no existing issuer; empty otherwise.
*/}}
{{- define "monoskope.ownCA" -}}
{{- if not .Values.certManager.issuerRef.name }}true{{ end }}
{{- end }}

{{/*
Checks the upstream values that depend on each other.
*/}}
{{- define "monoskope.checkUpstream" -}}
{{- with .Values.upstream }}
{{- if .issuer }}
{{- if not .clientID }}
{{- fail "upstream.clientID is required when upstream.issuer is set: use the client ID registered for Monoskope at the identity provider" }}
{{- end }}
{{- if not .clientSecret.existingSecret }}
{{- fail "upstream.clientSecret.existingSecret is required when upstream.issuer is set: name a Secret in the release namespace that contains the client secret" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
