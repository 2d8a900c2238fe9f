#!/usr/bin/env bash
# The optional monitoring component's cluster-side steps, for `just deploy` and
# `just undeploy` (deploy/deploy.just); KUBECTL as there.
#   monitoring.sh check             fails (with the fix) when deploy/overlays/monitoring
#                                   holds a PrometheusRule the cluster has no kind for
#   monitoring.sh remove [--dry-run]  deletes the PrometheusRule and the Pushgateway
#                                   egress, and the namespace's marker: left behind, the
#                                   rules would report stopped jobs as stale
set -euo pipefail
cd "$(dirname "$0")/.."
kubectl=${KUBECTL:-kubectl}
ns=analytics-jobs

# Whether the API server knows PrometheusRule (the Prometheus operator's CRD).
has_rule_kind() {
  local kinds
  kinds=$($kubectl api-resources --api-group=monitoring.coreos.com -o name 2>/dev/null || true)
  case "$kinds" in *prometheusrules*) return 0 ;; *) return 1 ;; esac
}

case "${1:-}" in
  check)
    rendered=$($kubectl kustomize deploy/overlays/monitoring)
    case "$rendered" in
      *"kind: PrometheusRule"*)
        if ! has_rule_kind; then
          echo "just deploy: monitoring needs the PrometheusRule kind of the Prometheus operator (e.g. the kube-prometheus-stack chart), which this cluster lacks. Install it, or for a Prometheus without the operator remove prometheus-rule.yaml from deploy/monitoring/kustomization.yaml and load deploy/monitoring/rules/robson-lake.rules.yml as a rule file (docs/deploy.md, Monitoring); or deploy with --no-monitoring. Nothing was scheduled." >&2
          exit 1
        fi ;;
    esac ;;
  remove)
    dry_run=${2:-}
    run() { echo "+ $*"; if [ "$dry_run" != --dry-run ]; then "$@"; fi; }
    if [ "$dry_run" = --dry-run ] || has_rule_kind; then
      run $kubectl -n "$ns" delete prometheusrule robson-lake --ignore-not-found
    fi
    run $kubectl -n "$ns" delete networkpolicy allow-pushgateway-egress --ignore-not-found
    if [ "$dry_run" = --dry-run ]; then
      run $kubectl annotate namespace "$ns" robson.io/monitoring-
    else
      $kubectl annotate namespace "$ns" robson.io/monitoring- >/dev/null 2>&1 || true
    fi ;;
  *)
    echo "usage: deploy/monitoring.sh check | remove [--dry-run]" >&2
    exit 2 ;;
esac
