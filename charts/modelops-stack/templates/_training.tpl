{{/* The trainer pod spec shared by the CronJob and the on-install Job. The including template sets
`.trainingScheduled` (true for the CronJob): approval applies to scheduled runs, which would replace a champion;
the first training on install promotes as usual, so `helm install` ends with a model serving. */}}
{{- define "modelops-stack.training.podSpec" -}}
{{- include "modelops-stack.pod.common" . }}
restartPolicy: Never
containers:
  - name: trainer
    {{- include "modelops-stack.container.common" . | nindent 4 }}
    args:
      - train
      - --algorithm={{ .Values.training.algorithm }}
      {{- range $key, $value := .Values.training.params }}
      - --param={{ $key }}={{ $value }}
      {{- end }}
      {{- with .Values.training.data }}
      - --data={{ . }}
      {{- end }}
      - --target={{ .Values.training.target }}
      - --test-size={{ .Values.training.testSize }}
      - --seed={{ .Values.training.seed }}
      - --promote={{ .Values.training.promote }}
      - --metric={{ .Values.training.metric }}
      - --min-delta={{ .Values.training.minDelta }}
      {{- with .Values.training.evalData }}
      - --eval-data={{ . }}
      {{- end }}
      {{- with .Values.training.positiveClass }}
      - --positive-class={{ . }}
      {{- end }}
      {{- range .Values.training.thresholds }}
      - --threshold={{ . }}
      {{- end }}
    env:
      - name: MLFLOW_TRACKING_URI
        value: {{ include "modelops-stack.mlflow.url" . | quote }}
      - name: MODELOPS_MODEL_NAME
        value: {{ .Values.model.name | quote }}
      - name: MODELOPS_MODEL_ALIAS
        value: {{ .Values.model.alias | quote }}
      - name: MODELOPS_EXPERIMENT
        value: {{ .Values.training.experiment | quote }}
      - name: MODELOPS_WAIT_S
        value: {{ .Values.training.waitS | quote }}
      {{- include "modelops-stack.env.mlflowPrincipal" (list . "trainer") | nindent 6 }}
      - name: MODELOPS_SIGNING_KEY_PATH
        value: /etc/modelops/signing/private-key.pem
      - name: MODELOPS_REQUIRE_APPROVAL
        value: {{ and .trainingScheduled .Values.training.requireApproval | quote }}
      - name: MODELOPS_IMAGE
        value: {{ include "modelops-stack.image" . | quote }}
    resources:
      {{- toYaml .Values.training.resources | nindent 6 }}
    volumeMounts:
      {{- include "modelops-stack.tmpMount" . | nindent 6 }}
      - name: signing-key
        mountPath: /etc/modelops/signing
        readOnly: true
volumes:
  {{- include "modelops-stack.tmpVolume" . | nindent 2 }}
  # the private key only (not the certificate): the one pod that signs models
  - name: signing-key
    secret:
      secretName: {{ include "modelops-stack.signing.secretName" . }}
      items:
        - key: private-key.pem
          path: private-key.pem
          mode: 0440  # owner root, group fsGroup: readable by the trainer's user through its group
{{- end }}
