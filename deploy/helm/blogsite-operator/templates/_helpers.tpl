{{/* Names, truncated to the 63 characters a label value or DNS name may have. */}}
{{- define "blogsite-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blogsite-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "blogsite-operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "blogsite-operator.fullname" . | trunc 46 | trimSuffix "-") }}
{{- end }}

{{- define "blogsite-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blogsite-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blogsite-operator.labels" -}}
{{ include "blogsite-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "blogsite-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "blogsite-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is needed when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "blogsite-operator.frontendImage" -}}
{{- if .Values.frontendImage }}
{{- .Values.frontendImage }}
{{- else }}
{{- printf "%s:%s" .Values.frontendImageRepository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "blogsite-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator may do to the objects of a namespace it runs sites in:
the same rules for the ClusterRole (all namespaces) and for each Role
(namespaced mode). Never delete on BlogSites, never write their spec.
*/}}
{{- define "blogsite-operator.siteRules" -}}
# BlogSites: watched and read; only their status is written (the spec is the user's).
- apiGroups: [blog.daedalus.dev]
  resources: [blogsites]
  verbs: [get, list, watch]
- apiGroups: [blog.daedalus.dev]
  resources: [blogsites/status]
  verbs: [patch]
# The children it renders and server-side-applies, watched by label to put
# back what someone changed by hand.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, list, watch, create, patch]
# ConfigMaps: nginx configurations (replaced ones deleted once no ReplicaSet
# mounts them) and ACME answers. list and watch are also what each
# cert-refresh Role grants, which RBAC allows only to a holder of them.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
# Secrets: the TLS Secret and the ACME account key it writes; a CA bundle and
# an EAB key it reads.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# Disruption budgets appear and go with the replica count.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# The cert-refresh pod's own identity: may read its one ConfigMap.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
# Rollouts are judged from ReplicaSets and pods; it never writes them.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# A site behind a shared Gateway: its two routes, written and deleted by
# name (never listed, never another's), and Gateways read for their
# listeners, addresses and conditions, never written. Without the Gateway
# API installed these rules grant nothing.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, tlsroutes]
  verbs: [get, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways]
  verbs: [get]
# Events on BlogSites, for `kubectl describe`.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}
