{{/* Names, labels and small computations shared by the templates. */}}

{{- define "kmosix.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-kmosix, or the release name when it already contains "kmosix". */}}
{{- define "kmosix.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kmosix.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" -}}
{{- end -}}

{{/* Labels of every object; "component" is passed as .component. */}}
{{- define "kmosix.labels" -}}
helm.sh/chart: {{ include "kmosix.chart" .root }}
{{ include "kmosix.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kmosix
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kmosix.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmosix.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* registry/repository:tag or @digest; tag defaults to the appVersion. */}}
{{- define "kmosix.image" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kmosix.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "kmosix.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kmosix.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (printf "%s-agent" (include "kmosix.fullname" .)) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Object names. */}}
{{- define "kmosix.controller.name" -}}{{ include "kmosix.fullname" . }}-controller{{- end -}}
{{- define "kmosix.agent.name" -}}{{ include "kmosix.fullname" . }}-agent{{- end -}}
{{- define "kmosix.etcd.name" -}}{{ include "kmosix.fullname" . }}-etcd{{- end -}}
{{- define "kmosix.etcd.clientService" -}}{{ include "kmosix.fullname" . }}-etcd-client{{- end -}}
{{- define "kmosix.tokens.secret" -}}
{{- default (printf "%s-tokens" (include "kmosix.fullname" .)) .Values.tokens.existingSecret -}}
{{- end -}}

{{/* Secrets of the certificates, by source. */}}
{{- define "kmosix.secret.ca" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.ca is required with certificates.source=existingSecret" .Values.certificates.existingSecret.ca -}}
{{- else if eq .Values.certificates.source "certManager" -}}
{{- include "kmosix.fullname" . }}-controller-tls
{{- else -}}
{{- include "kmosix.fullname" . }}-ca
{{- end -}}
{{- end -}}
{{- define "kmosix.secret.controller" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.controller is required with certificates.source=existingSecret" .Values.certificates.existingSecret.controller -}}
{{- else -}}
{{- include "kmosix.fullname" . }}-controller-tls
{{- end -}}
{{- end -}}
{{- define "kmosix.secret.agents" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.agents is required with certificates.source=existingSecret" .Values.certificates.existingSecret.agents -}}
{{- else -}}
{{- include "kmosix.fullname" . }}-agent-tls
{{- end -}}
{{- end -}}
{{- define "kmosix.secret.nodeIssuer" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.nodeIssuer is required with certificates.source=existingSecret and agentIdentity=podCertificate" .Values.certificates.existingSecret.nodeIssuer -}}
{{- else -}}
{{- include "kmosix.fullname" . }}-node-issuer
{{- end -}}
{{- end -}}
{{/* The agents get their identity from pod certificates (signer kmosix.io/node). */}}
{{- define "kmosix.podCertificates" -}}
{{- if eq .Values.certificates.agentIdentity "podCertificate" }}true{{ end -}}
{{- end -}}
{{- define "kmosix.secret.etcdServer" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.etcdServer is required with certificates.source=existingSecret and etcd.mode=embedded" .Values.certificates.existingSecret.etcdServer -}}
{{- else -}}
{{- include "kmosix.fullname" . }}-etcd-tls
{{- end -}}
{{- end -}}
{{- define "kmosix.secret.etcdRoot" -}}
{{- if eq .Values.certificates.source "existingSecret" -}}
{{- required "certificates.existingSecret.etcdRoot is required with certificates.source=existingSecret and etcd.auth.enabled" .Values.certificates.existingSecret.etcdRoot -}}
{{- else -}}
{{- include "kmosix.fullname" . }}-etcd-root
{{- end -}}
{{- end -}}

{{/* The CA that etcd's serving certificate chains to (Secret, key ca.crt). */}}
{{- define "kmosix.secret.etcdCa" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- required "etcd.external.caSecret is required with etcd.mode=external" .Values.etcd.external.caSecret -}}
{{- else -}}
{{- include "kmosix.secret.ca" . -}}
{{- end -}}
{{- end -}}

{{/* Comma-separated etcd client URLs. */}}
{{- define "kmosix.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- if not .Values.etcd.external.endpoints -}}
{{- fail "etcd.external.endpoints must list at least one https:// endpoint with etcd.mode=external" -}}
{{- end -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $name := include "kmosix.etcd.name" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.embedded.replicas) -}}
{{- $urls = append $urls (printf "https://%s-%d.%s.%s.svc.%s:%d" $name $i $name $.Release.Namespace $.Values.clusterDomain (int $.Values.etcd.embedded.clientPort)) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}
{{- end -}}

{{/* The controller Service's DNS names (its certificate's SANs). */}}
{{- define "kmosix.controller.dnsNames" -}}
{{- $svc := include "kmosix.controller.name" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) "localhost" | toJson -}}
{{- end -}}

{{/* etcd's serving and peer names (wildcards cover every member). */}}
{{- define "kmosix.etcd.dnsNames" -}}
{{- $name := include "kmosix.etcd.name" . -}}
{{- $client := include "kmosix.etcd.clientService" . -}}
{{- $ns := .Release.Namespace -}}
{{- list (printf "*.%s.%s.svc" $name $ns) (printf "*.%s.%s.svc.%s" $name $ns .Values.clusterDomain) $client (printf "%s.%s.svc" $client $ns) (printf "%s.%s.svc.%s" $client $ns .Values.clusterDomain) "localhost" | toJson -}}
{{- end -}}

{{- define "kmosix.podSecurityRestricted" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The agents' nodes as a JSON list of {name, ips}: the nodes matching
agent.nodeSelector found in the cluster (lookup; none when rendering
offline) and certificates.nodes. */}}
{{- define "kmosix.agentNodes" -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- $found := lookup "v1" "Node" "" "" -}}
{{- range ($found.items | default list) -}}
{{- $node := . -}}
{{- $match := true -}}
{{- range $k, $v := $.Values.agent.nodeSelector -}}
{{- if ne (index ($node.metadata.labels | default dict) $k | default "") (toString $v) }}{{ $match = false }}{{ end -}}
{{- end -}}
{{- if $match -}}
{{- $ips := list -}}
{{- range ($node.status.addresses | default list) -}}
{{- if or (eq .type "InternalIP") (eq .type "ExternalIP") }}{{ $ips = append $ips .address }}{{ end -}}
{{- end -}}
{{- $_ := set $seen $node.metadata.name true -}}
{{- $out = append $out (dict "name" $node.metadata.name "ips" $ips) -}}
{{- end -}}
{{- end -}}
{{- range $.Values.certificates.nodes -}}
{{- if not (hasKey $seen .) -}}
{{- $_ := set $seen . true -}}
{{- $out = append $out (dict "name" . "ips" (list)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
