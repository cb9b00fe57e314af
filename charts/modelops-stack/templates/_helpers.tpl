{{/* Names ------------------------------------------------------------------------------------------ */}}
{{- define "modelops-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelops-stack.fullname" -}}
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

{{/* "<fullname>-<component>", e.g. include "modelops-stack.component.name" (list . "mlflow") */}}
{{- define "modelops-stack.component.name" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
{{- printf "%s-%s" (include "modelops-stack.fullname" $root | trunc 50 | trimSuffix "-") $component }}
{{- end }}

{{- define "modelops-stack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: selector labels are name + instance + component only ---------------------------------- */}}
{{- define "modelops-stack.component.selectorLabels" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "modelops-stack.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{- define "modelops-stack.component.labels" -}}
{{- $root := index . 0 -}}
{{ include "modelops-stack.component.selectorLabels" . }}
app.kubernetes.io/part-of: modelops-stack
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "modelops-stack.chart" $root }}
{{- end }}

{{/* Images ------------------------------------------------------------------------------------------ */}}
{{- define "modelops-stack.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "modelops-stack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelops-stack.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secrets: where each credential lives ----------------------------------------------------------- */}}
{{- define "modelops-stack.secrets.generatedName" -}}
{{- include "modelops-stack.component.name" (list . "credentials") }}
{{- end }}

{{- define "modelops-stack.adminToken.secretName" -}}
{{- .Values.modelServer.auth.existingSecret | default (include "modelops-stack.secrets.generatedName" .) }}
{{- end }}
{{- define "modelops-stack.adminToken.secretKey" -}}
{{- if .Values.modelServer.auth.existingSecret }}{{ .Values.modelServer.auth.secretKey }}{{ else }}admin-token{{ end }}
{{- end }}

{{- define "modelops-stack.database.secretName" -}}
{{- if .Values.postgresql.enabled }}
{{- .Values.postgresql.auth.existingSecret | default (include "modelops-stack.secrets.generatedName" .) }}
{{- else }}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}
{{- define "modelops-stack.database.secretKey" -}}
{{- if .Values.postgresql.enabled }}
{{- if .Values.postgresql.auth.existingSecret }}{{ .Values.postgresql.auth.secretKey }}{{ else }}postgres-password{{ end }}
{{- else }}{{ .Values.externalDatabase.secretKey }}{{ end }}
{{- end }}

{{- define "modelops-stack.database.uri" -}}
{{- if .Values.postgresql.enabled }}
{{- printf "postgresql+psycopg://%s@%s:5432/%s" .Values.postgresql.auth.username (include "modelops-stack.component.name" (list . "postgresql")) .Values.postgresql.auth.database }}
{{- else }}
{{- printf "postgresql+psycopg://%s@%s:%v/%s" .Values.externalDatabase.user (required "externalDatabase.host is required when postgresql.enabled is false" .Values.externalDatabase.host) .Values.externalDatabase.port .Values.externalDatabase.database }}
{{- end }}
{{- end }}

{{/* Object store ------------------------------------------------------------------------------------ */}}
{{- define "modelops-stack.s3.endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "http://%s:%v" (include "modelops-stack.component.name" (list . "minio")) .Values.minio.service.port }}
{{- else }}{{ .Values.externalS3.endpoint }}{{ end }}
{{- end }}

{{- define "modelops-stack.s3.bucket" -}}
{{- if .Values.minio.enabled }}{{ .Values.minio.bucket }}{{ else }}{{ required "externalS3.bucket is required when minio.enabled is false" .Values.externalS3.bucket }}{{ end }}
{{- end }}

{{/* MinIO's credentials: the root user (MinIO pod only) and MLflow's bucket-scoped user */}}
{{- define "modelops-stack.minio.secretName" -}}
{{- .Values.minio.auth.existingSecret | default (include "modelops-stack.secrets.generatedName" .) }}
{{- end }}
{{- define "modelops-stack.minio.rootUserKey" -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.userKey }}{{ else }}minio-root-user{{ end }}
{{- end }}
{{- define "modelops-stack.minio.rootPasswordKey" -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.passwordKey }}{{ else }}minio-root-password{{ end }}
{{- end }}
{{- define "modelops-stack.minio.mlflowUserKey" -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.mlflowUserKey }}{{ else }}minio-mlflow-user{{ end }}
{{- end }}
{{- define "modelops-stack.minio.mlflowPasswordKey" -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.mlflowPasswordKey }}{{ else }}minio-mlflow-password{{ end }}
{{- end }}
{{- define "modelops-stack.minio.env.root" -}}
- name: MINIO_ROOT_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "modelops-stack.minio.secretName" . }}
      key: {{ include "modelops-stack.minio.rootUserKey" . }}
- name: MINIO_ROOT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "modelops-stack.minio.secretName" . }}
      key: {{ include "modelops-stack.minio.rootPasswordKey" . }}
{{- end }}
{{/* Name of the MinIO policy that allows the artifact bucket only */}}
{{- define "modelops-stack.minio.mlflowPolicyName" -}}
{{- printf "mlflow-artifacts-%s" (include "modelops-stack.s3.bucket" .) }}
{{- end }}

{{/* Secret name and keys of the S3 keys MLflow uses; empty name = no keys (role-based access). With the
bundled MinIO these are MLflow's own bucket-scoped user, never the root credentials. */}}
{{- define "modelops-stack.s3.secretName" -}}
{{- if .Values.minio.enabled }}{{ include "modelops-stack.minio.secretName" . }}
{{- else }}{{ .Values.externalS3.existingSecret }}{{ end }}
{{- end }}
{{- define "modelops-stack.s3.accessKeyKey" -}}
{{- if .Values.minio.enabled }}{{ include "modelops-stack.minio.mlflowUserKey" . }}
{{- else }}{{ .Values.externalS3.accessKeyIdKey }}{{ end }}
{{- end }}
{{- define "modelops-stack.s3.secretKeyKey" -}}
{{- if .Values.minio.enabled }}{{ include "modelops-stack.minio.mlflowPasswordKey" . }}
{{- else }}{{ .Values.externalS3.secretAccessKeyKey }}{{ end }}
{{- end }}

{{/* MLflow authentication (MLflow's basic-auth app): one principal per role ----------------------- */}}
{{- define "modelops-stack.mlflowAuth.secretName" -}}
{{- .Values.mlflow.auth.existingSecret | default (include "modelops-stack.secrets.generatedName" .) }}
{{- end }}
{{- define "modelops-stack.mlflowAuth.configMapName" -}}
{{- include "modelops-stack.component.name" (list . "mlflow-auth") }}
{{- end }}

{{/* Prometheus scrapes MLflow's /metrics (behind the login) as the read-only model-server principal. The
ServiceMonitor's basicAuth takes the username from a Secret too, so the chart renders one holding only the
username (not secret, and independent of where the passwords come from). */}}
{{- define "modelops-stack.mlflow.scrapeUser" -}}model-server{{- end }}
{{- define "modelops-stack.mlflow.scrapeSecretName" -}}
{{- include "modelops-stack.component.name" (list . "mlflow-scrape") }}
{{- end }}
{{- define "modelops-stack.mlflow.scrapePasswordKey" -}}
{{- printf "mlflow-%s-password" (include "modelops-stack.mlflow.scrapeUser" .) }}
{{- end }}

{{/* MLFLOW_TRACKING_USERNAME/PASSWORD of one principal: include ... (list . "trainer") */}}
{{- define "modelops-stack.env.mlflowPrincipal" -}}
{{- $root := index . 0 }}{{- $user := index . 1 -}}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ $user | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "modelops-stack.mlflowAuth.secretName" $root }}
      key: {{ printf "mlflow-%s-password" $user }}
{{- end }}

{{/* Web console sessions: the key that signs their cookies is generated next to the admin token, in the
credentials Secret (lookup-and-keep, so every replica and every upgrade share it). With the admin token from
the user's Secret, or the credentials from External Secrets, the server derives the key from the admin token
(no new key asked of the user's store). "true" or "" */}}
{{- define "modelops-stack.uiSession.generated" -}}
{{- if and .Values.modelServer.ui.enabled (not .Values.modelServer.auth.existingSecret) (not .Values.externalSecrets.enabled) }}true{{ end }}
{{- end }}

{{/* Rollout controller ------------------------------------------------------------------------------- */}}
{{- define "modelops-stack.controller.serviceAccountName" -}}
{{- include "modelops-stack.component.name" (list . "controller") }}
{{- end }}
{{/* The controller talks to the Kubernetes API (a token in its pod) only to start drift retrainings */}}
{{- define "modelops-stack.controller.kubernetesApi" -}}
{{- if and .Values.controller.enabled .Values.retraining.onDrift.enabled }}true{{ end }}
{{- end }}

{{/* The model server's headless Service: one DNS record per ready replica, for whoever reads every
replica's /metrics (the bundled Prometheus, the rollout controller) */}}
{{- define "modelops-stack.modelServer.headlessName" -}}
{{- include "modelops-stack.component.name" (list . "model-server") }}-headless
{{- end }}
{{- define "modelops-stack.modelServer.headlessEnabled" -}}
{{- if or .Values.monitoring.bundled.enabled .Values.controller.enabled }}true{{ end }}
{{- end }}

{{/* Model signing: the private key (trainers only) and the certificate that verifies (model servers) -- */}}
{{- define "modelops-stack.signing.secretName" -}}
{{- .Values.signing.existingSecret | default (include "modelops-stack.component.name" (list . "signing")) }}
{{- end }}
{{- define "modelops-stack.signing.publicConfigMapName" -}}
{{- .Values.signing.existingPublicConfigMap | default (include "modelops-stack.component.name" (list . "signing-public")) }}
{{- end }}

{{/* The generated key pair as JSON {"key", "certificate"} (PEM): read back from the existing Secret, else
generated once per render. Memoized in .Values so the Secret, the public ConfigMap and the checksums of one
render agree (each include would otherwise generate a new key). */}}
{{- define "modelops-stack.signing.generated" -}}
{{- if not (hasKey .Values "_signingGenerated") }}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace (include "modelops-stack.component.name" (list . "signing"))).data | default dict }}
{{- $pair := dict }}
{{- if and (get $existing "private-key.pem") (get $existing "certificate.pem") }}
{{- $pair = dict "key" (get $existing "private-key.pem" | b64dec) "certificate" (get $existing "certificate.pem" | b64dec) }}
{{- else }}
{{- $key := genPrivateKey "ecdsa" }}
{{- $cert := genSelfSignedCertWithKey "modelops-model-signing" nil nil 3650 $key }}
{{- $pair = dict "key" $key "certificate" $cert.Cert }}
{{- end }}
{{- $_ := set .Values "_signingGenerated" $pair }}
{{- end }}
{{- toJson (get .Values "_signingGenerated") }}
{{- end }}

{{/* The PEM that verifies signatures, when the chart writes the public ConfigMap */}}
{{- define "modelops-stack.signing.certificate" -}}
{{- if .Values.signing.existingSecret }}
{{- required "signing.publicCertificate (or signing.existingPublicConfigMap) is required when signing.existingSecret is set: model servers verify with the public certificate only" .Values.signing.publicCertificate }}
{{- else }}
{{- (include "modelops-stack.signing.generated" . | fromJson).certificate }}
{{- end }}
{{- end }}

{{/* Changes whenever the key pair changes (the certificate identifies it) */}}
{{- define "modelops-stack.signing.checksum" -}}
{{- if .Values.signing.existingSecret }}
{{- toJson (list .Values.signing.existingSecret .Values.signing.existingPublicConfigMap .Values.signing.publicCertificate) | sha256sum }}
{{- else }}
{{- include "modelops-stack.signing.certificate" . | sha256sum }}
{{- end }}
{{- end }}

{{/* Environment blocks -------------------------------------------------------------------------------- */}}
{{- define "modelops-stack.env.database" -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "modelops-stack.database.secretName" . }}
      key: {{ include "modelops-stack.database.secretKey" . }}
{{- end }}

{{- define "modelops-stack.env.s3" -}}
{{- with include "modelops-stack.s3.endpoint" . }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if not .Values.minio.enabled }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.externalS3.region | quote }}
{{- end }}
{{- with include "modelops-stack.s3.secretName" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "modelops-stack.s3.accessKeyKey" $ }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "modelops-stack.s3.secretKeyKey" $ }}
{{- end }}
{{- end }}

{{- define "modelops-stack.mlflow.url" -}}
{{- printf "http://%s:%v" (include "modelops-stack.component.name" (list . "mlflow")) .Values.mlflow.service.port }}
{{- end }}

{{/* Pod pieces ------------------------------------------------------------------------------------------ */}}
{{- define "modelops-stack.pod.common" -}}
serviceAccountName: {{ include "modelops-stack.serviceAccountName" . }}
automountServiceAccountToken: false
{{ include "modelops-stack.pod.placement" . }}
{{- end }}

{{/* Security context, pull secrets and scheduling of every pod (pod.common without the ServiceAccount) */}}
{{- define "modelops-stack.pod.placement" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "modelops-stack.tmpVolume" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "modelops-stack.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Checksums so pods restart when configuration, credentials or the signing key pair change */}}
{{- define "modelops-stack.podAnnotations" -}}
{{- $configMaps := list }}
{{- range $file := list "/mlflow/configmap-auth.yaml" "/minio/configmap-provisioning.yaml" }}
{{- $configMaps = append $configMaps (include (print $.Template.BasePath $file) $) }}
{{- end }}
checksum/config: {{ toJson (list (pick .Values "model" "mlflow" "modelServer" "training" "externalS3" "externalDatabase" "image") $configMaps) | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secrets/secret.yaml") . | sha256sum }}
checksum/signing: {{ include "modelops-stack.signing.checksum" . }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The modelops image's container basics */}}
{{- define "modelops-stack.container.common" -}}
image: {{ include "modelops-stack.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* NetworkPolicy peer: the release's pods of one component */}}
{{- define "modelops-stack.netpol.peer" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "modelops-stack.name" $root }}
      app.kubernetes.io/instance: {{ $root.Release.Name }}
      app.kubernetes.io/component: {{ $component }}
{{- end }}

{{/* Egress to an external database and/or object store (only when they are external) */}}
{{- define "modelops-stack.netpol.external" -}}
{{- if or (not .Values.postgresql.enabled) (not .Values.minio.enabled) }}
- {{- with .Values.networkPolicy.externalServices }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    {{- if not .Values.postgresql.enabled }}
    - {port: {{ .Values.externalDatabase.port }}, protocol: TCP}
    {{- end }}
    {{- if not .Values.minio.enabled }}
    - {port: 443, protocol: TCP}
    - {port: 80, protocol: TCP}
    {{- with .Values.externalS3.endpoint }}
    {{- $port := regexFind ":[0-9]+$" (trimSuffix "/" .) | trimPrefix ":" }}
    {{- if $port }}
    - {port: {{ $port }}, protocol: TCP}
    {{- end }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end }}
