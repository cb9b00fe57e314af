{{/* The platform's alert rules (groups), shared by the PrometheusRule and the bundled Prometheus. */}}
{{- define "modelops-stack.alertGroups" -}}
{{- $server := include "modelops-stack.component.name" (list . "model-server") }}
{{- $rules := .Values.monitoring.prometheusRule }}
{{- $sel := printf "namespace=\"%s\", service=\"%s\"" .Release.Namespace $server }}
groups:
  - name: modelops-model-server
    rules:
      - alert: ModelServerDown
        expr: sum(up{ {{- $sel -}} }) == 0 or absent(up{ {{- $sel -}} })
        for: 2m
        labels: {severity: critical}
        annotations:
          summary: No model-server replica of {{ .Release.Name }} is being scraped successfully.
      - alert: ModelNotLoaded
        expr: min(modelops_model_loaded{ {{- $sel -}} }) == 0
        for: 10m
        labels: {severity: critical}
        annotations:
          summary: A model-server replica has had no model loaded for 10 minutes (is there a champion?).
      - alert: ModelServerErrorRatioHigh
        expr: >-
          sum(rate(modelops_requests_total{ {{- $sel -}}, status=~"5.."}[5m]))
          / sum(rate(modelops_requests_total{ {{- $sel -}} }[5m])) > {{ $rules.errorRatioThreshold }}
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: More than {{ mulf $rules.errorRatioThreshold 100 }}% of model-server responses are 5xx (errors / all requests).
      - alert: ModelServerLatencyP99High
        expr: >-
          histogram_quantile(0.99, sum by (le) (rate(modelops_request_duration_seconds_bucket{ {{- $sel -}}, endpoint="/predict"}[5m])))
          > {{ $rules.p99LatencyThresholdS }}
        for: 10m
        labels: {severity: warning}
        annotations:
          summary: p99 latency of /predict is above {{ $rules.p99LatencyThresholdS }} s.
      - alert: ModelLoadFailures
        expr: increase(modelops_model_load_failures_total{ {{- $sel -}} }[15m]) > 0
        labels: {severity: warning}
        annotations:
          summary: A model version failed to load or warm up; the previous version keeps serving.
      - alert: ModelAliasNotFollowed
        expr: max(modelops_alias_unfollowed_polls{ {{- $sel -}} }) >= {{ $rules.aliasUnfollowedPolls }}
        labels: {severity: warning}
        annotations:
          summary: A replica has not followed the registry alias for {{ $rules.aliasUnfollowedPolls }} polls.
      - alert: ModelVersionRefused
        expr: sum by (reason) (increase(modelops_model_refusals_total{ {{- $sel -}} }[15m])) > 0
        labels: {severity: critical}
        annotations:
          summary: "A model version failed the trust checks ({{ "{{" }} $labels.reason {{ "}}" }}): unsigned, foreign-key, tampered or code-running artifacts are never served; find who registered or moved it (`modelops history`)."
      - alert: ModelInputDrift
        expr: max(modelops_drift_detected{ {{- $sel -}} }) == 1
        for: {{ $rules.driftFor }}
        labels: {severity: warning}
        annotations:
          summary: "Served inputs have drifted from the training data for {{ $rules.driftFor }} (GET /drift names the features)."
      - alert: PredictionLogDropping
        expr: sum by (outcome) (increase(modelops_prediction_log_records_total{ {{- $sel -}}, outcome!="written"}[10m])) > 0
        for: 10m
        labels: {severity: warning}
        annotations:
          summary: "Prediction-log records are being {{ "{{" }} $labels.outcome {{ "}}" }} instead of written (buffer full, or MLflow refuses or cannot take the uploads): retraining and the offline feedback join miss them."
  - name: modelops-rollout
    rules:
      - alert: RolloutChallengerErrors
        expr: >-
          (
            sum by (version) (rate(modelops_version_requests_total{ {{- $sel -}}, outcome="error"}[5m]))
            / sum by (version) (rate(modelops_version_requests_total{ {{- $sel -}} }[5m]))
            > {{ $rules.errorRatioThreshold }}
          )
          and on (version) (max by (version) (modelops_rollout_percent{ {{- $sel -}} }) > 0)
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "Challenger version {{ "{{" }} $labels.version {{ "}}" }} answers more than {{ mulf $rules.errorRatioThreshold 100 }}% of its requests with errors while it takes traffic in a rollout (`modelops rollout abort` gives the champion all traffic)."
  - name: modelops-storage
    rules:
      - alert: ModelOpsVolumeAlmostFull
        expr: >-
          kubelet_volume_stats_available_bytes{namespace="{{ .Release.Namespace }}", persistentvolumeclaim=~"data-{{ include "modelops-stack.fullname" . }}-(postgresql|minio)-.*"}
          / kubelet_volume_stats_capacity_bytes{namespace="{{ .Release.Namespace }}", persistentvolumeclaim=~"data-{{ include "modelops-stack.fullname" . }}-(postgresql|minio)-.*"}
          < {{ $rules.volumeFreeRatioThreshold }}
        for: 10m
        labels: {severity: warning}
        annotations:
          summary: A PostgreSQL or MinIO volume has less than {{ mulf $rules.volumeFreeRatioThreshold 100 }}% free space.
{{- end }}
