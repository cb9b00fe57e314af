{{/* An Ingress for one component: (list $ "component" .Values.<component>.ingress "service-name" port) */}}
{{- define "modelops-stack.ingress" -}}
{{- $root := index . 0 }}{{- $component := index . 1 }}{{- $ingress := index . 2 }}{{- $service := index . 3 }}{{- $port := index . 4 -}}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "modelops-stack.component.name" (list $root $component) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "modelops-stack.component.labels" (list $root $component) | nindent 4 }}
  {{- with $ingress.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $ingress.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $ingress.tls }}
  tls:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    {{- range $ingress.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range (.paths | default (list (dict "path" "/" "pathType" "Prefix"))) }}
          - path: {{ .path }}
            pathType: {{ .pathType | default "Prefix" }}
            backend:
              service:
                name: {{ $service }}
                port:
                  number: {{ $port }}
          {{- end }}
    {{- end }}
{{- end }}

{{/* A Gateway API HTTPRoute for one component: (list $ "component" .Values.<component>.httpRoute "service" port) */}}
{{- define "modelops-stack.httpRoute" -}}
{{- $root := index . 0 }}{{- $component := index . 1 }}{{- $route := index . 2 }}{{- $service := index . 3 }}{{- $port := index . 4 -}}
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {{ include "modelops-stack.component.name" (list $root $component) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "modelops-stack.component.labels" (list $root $component) | nindent 4 }}
spec:
  parentRefs:
    {{- toYaml (required (printf "%s.httpRoute.parentRefs is required when the route is enabled" $component) $route.parentRefs) | nindent 4 }}
  {{- with $route.hostnames }}
  hostnames:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  rules:
    - backendRefs:
        - name: {{ $service }}
          port: {{ $port }}
{{- end }}
