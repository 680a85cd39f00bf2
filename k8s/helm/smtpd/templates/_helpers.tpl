{{- define "smtpd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smtpd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "smtpd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "smtpd.labels" -}}
{{ include "smtpd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "smtpd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smtpd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The TLS Secret: given, or cert-manager's, or none (self-signed at start). */}}
{{- define "smtpd.tlsSecret" -}}
{{- if .Values.tls.secretName -}}
{{- .Values.tls.secretName -}}
{{- else if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "smtpd.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* smtpd.yaml: the chart's settings, then .Values.config over them. */}}
{{- define "smtpd.config" -}}
{{- $tls := include "smtpd.tlsSecret" . -}}
{{- $c := dict
  "server" (dict "hostname" .Values.hostname "drain_timeout" .Values.drainTimeout)
  "listeners" (list
    (dict "name" "mx" "address" (printf "0.0.0.0:%v" .Values.smtp.containerPorts.smtp) "mode" "smtp")
    (dict "name" "submission" "address" (printf "0.0.0.0:%v" .Values.smtp.containerPorts.submission) "mode" "submission")
    (dict "name" "smtps" "address" (printf "0.0.0.0:%v" .Values.smtp.containerPorts.smtps) "mode" "smtps"))
  "spool" (dict "path" "/var/spool/smtpd/queue")
  "control" (dict
    "address" (ternary (printf "0.0.0.0:%v" .Values.grpc.port) (printf "127.0.0.1:%v" .Values.grpc.port) .Values.grpc.expose)
    "health_address" (printf "0.0.0.0:%v" .Values.grpc.healthPort)
    "local_address" (ternary (printf "127.0.0.1:%v" .Values.grpc.localPort) "" .Values.grpc.expose)
    "tls_cert_file" (ternary "/etc/smtpd/tls/tls.crt" "" (ne $tls ""))
    "tls_key_file" (ternary "/etc/smtpd/tls/tls.key" "" (ne $tls ""))
    "tokens_file" (ternary "/etc/smtpd/tokens/tokens" "" (ne .Values.control.tokensSecret "")))
  "metrics" (dict "address" (printf "0.0.0.0:%v" .Values.metrics.port))
  "tls" (dict "cert_file" (ternary "/etc/smtpd/tls/tls.crt" "" (ne $tls "")) "key_file" (ternary "/etc/smtpd/tls/tls.key" "" (ne $tls "")))
  "auth" (dict "users_file" (ternary "/etc/smtpd/users/users" "" (ne .Values.auth.usersSecret "")))
  "policy" (dict
    "local_domains" .Values.policy.localDomains
    "relay_domains" .Values.policy.relayDomains
    "trusted_networks" .Values.policy.trustedNetworks
    "max_message_size" .Values.policy.maxMessageSize
    "max_recipients" .Values.policy.maxRecipients)
  "routes" .Values.routes
-}}
{{- toYaml (mustMergeOverwrite $c .Values.config) -}}
{{- end -}}
