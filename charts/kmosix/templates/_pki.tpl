{{/* ServiceAccount, Role (Secrets, when .secrets) and ClusterRole (read
nodes) of one of the chart's Jobs; .hook: the Helm hook events, "" for a
regular object. */}}
{{- define "kmosix.pki.hookMeta" -}}
{{- if .hook }}
annotations:
  helm.sh/hook: {{ .hook }}
  helm.sh/hook-weight: "-10"
  helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}
{{- end -}}

{{- define "kmosix.pki.rbac" -}}
{{- $root := .root }}
{{- $full := printf "%s-%s" (include "kmosix.fullname" $root) .name }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  {{- include "kmosix.pki.hookMeta" . | nindent 2 }}
{{- if .secrets }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  {{- include "kmosix.pki.hookMeta" . | nindent 2 }}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, list, create, patch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $full }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  {{- include "kmosix.pki.hookMeta" . | nindent 2 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $full }}
subjects:
  - kind: ServiceAccount
    name: {{ $full }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ $full }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  {{- include "kmosix.pki.hookMeta" . | nindent 2 }}
rules:
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ $full }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  {{- include "kmosix.pki.hookMeta" . | nindent 2 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $full }}
subjects:
  - kind: ServiceAccount
    name: {{ $full }}
    namespace: {{ $root.Release.Namespace }}
{{- end -}}

{{/* A hook Job running kmosix-pki.sh .steps. */}}
{{- define "kmosix.pki.job" -}}
{{- $root := .root -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "kmosix.fullname" $root }}-{{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
  annotations:
    helm.sh/hook: {{ .hook }}
    helm.sh/hook-weight: "0"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: 3
  activeDeadlineSeconds: 600
  template:
    {{- include "kmosix.pki.pod" . | nindent 4 }}
{{- end -}}

{{/* The pod template of a Job running kmosix-pki.sh .steps. */}}
{{- define "kmosix.pki.pod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $full := printf "%s-%s" (include "kmosix.fullname" $root) .name -}}
{{- $etcdAuth := has "etcd-auth" .steps -}}
{{- $selector := list -}}
{{- range $k, $val := $v.agent.nodeSelector }}{{ $selector = append $selector (printf "%s=%s" $k $val) }}{{ end -}}
metadata:
  labels:
    {{- include "kmosix.labels" (dict "root" $root "component" "pki") | nindent 4 }}
spec:
  serviceAccountName: {{ $full }}
  restartPolicy: Never
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: pki
      image: {{ include "kmosix.image" (dict "root" $root "image" $v.tools.image) }}
      imagePullPolicy: {{ $v.tools.image.pullPolicy }}
      command:
        - /bin/sh
        - -c
        - {{ $root.Files.Get "files/kmosix-pki.sh" | quote }}
        - kmosix-pki
        {{- range .steps }}
        - {{ . }}
        {{- end }}
      env:
        - {name: HOME, value: /tmp}
        - {name: NAMESPACE, value: {{ $root.Release.Namespace | quote }}}
        - {name: RELEASE, value: {{ $root.Release.Name | quote }}}
        - {name: SECRET_LABELS, value: {{ printf "app.kubernetes.io/instance=%s,app.kubernetes.io/name=%s" $root.Release.Name (include "kmosix.name" $root) | quote }}}
        - {name: DAYS, value: {{ $v.certificates.durationDays | quote }}}
        - {name: RENEW_DAYS, value: {{ $v.certificates.renewBeforeDays | quote }}}
        - {name: NODE_SELECTOR, value: {{ join "," $selector | quote }}}
        - {name: EXTRA_NODES, value: {{ join " " $v.certificates.nodes | quote }}}
        - {name: CA_SECRET, value: {{ include "kmosix.secret.ca" $root | quote }}}
        - {name: CA_KEY_SECRET, value: {{ include "kmosix.fullname" $root }}-ca-key}
        - {name: CONTROLLER_SECRET, value: {{ include "kmosix.secret.controller" $root | quote }}}
        - {name: CONTROLLER_DNS, value: {{ include "kmosix.controller.dnsNames" $root | fromJsonArray | join " " | quote }}}
        {{- if eq $v.etcd.mode "embedded" }}
        - {name: ETCD_SECRET, value: {{ include "kmosix.secret.etcdServer" $root | quote }}}
        - {name: ETCD_DNS, value: {{ include "kmosix.etcd.dnsNames" $root | fromJsonArray | join " " | quote }}}
        {{- end }}
        - {name: ETCD_ROOT_SECRET, value: {{ include "kmosix.fullname" $root }}-etcd-root}
        {{- if include "kmosix.podCertificates" $root }}
        - {name: NODE_ISSUER_SECRET, value: {{ include "kmosix.secret.nodeIssuer" $root | quote }}}
        {{- else }}
        - {name: AGENT_SECRET, value: {{ include "kmosix.secret.agents" $root | quote }}}
        {{- end }}
        - {name: ETCD_ENDPOINTS, value: {{ include "kmosix.etcd.endpoints" $root | quote }}}
        - {name: ETCD_PREFIX, value: {{ $v.etcd.prefix | quote }}}
      securityContext:
        {{- include "kmosix.podSecurityRestricted" $root | nindent 8 }}
      {{- with $v.tools.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $etcdAuth }}
        - name: etcd-root
          mountPath: /etc/kmosix/etcd-root
          readOnly: true
        - name: etcd-ca
          mountPath: /etc/kmosix/etcd-ca
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        medium: Memory
        sizeLimit: 16Mi
    {{- if $etcdAuth }}
    - name: etcd-root
      secret:
        secretName: {{ include "kmosix.secret.etcdRoot" $root }}
        defaultMode: 0440
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
    - name: etcd-ca
      secret:
        secretName: {{ include "kmosix.secret.etcdCa" $root }}
        defaultMode: 0440
        items:
          - {key: ca.crt, path: ca.crt}
    {{- end }}
  {{- with $v.controller.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.controller.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
