#!/usr/bin/env bash
# Validates helm/sharemesh without a cluster (`make helm-check`; `make test` runs it first).
#
#   1. For each values combination below: chart-check (helm lint --strict, a `helm template`
#      render, every object against strict Kubernetes / Istio / Linkerd / Gateway API schemas).
#   2. The chart tests (helm/tests/chart_test.py + behaviour.py): misspelled values fail the schema,
#      the rendered mesh policies and NetworkPolicies allow exactly the calls sharemesh needs (judged
#      by each mesh's documented rules), retries never retry load shedding and stay bounded, plus
#      the storage, NATS, secret, image, security and network rules. The chart refuses a Kubernetes
#      below Chart.yaml's kubeVersion at render time, which the tests check (1.28 must fail).
#
# The kit lives beside the project (../shared/tools/chart-check, or $CHART_CHECK). Where it is
# absent (a clone elsewhere), `helm lint` + `helm template` run instead if a helm binary exists;
# with neither, a SKIPPED line says what was not checked. A missing tool never fails this script;
# a failing check always does.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

CHART=helm/sharemesh
REL=(-n sharemesh --release-name sharemesh)
KIT=${CHART_CHECK:-../shared/tools/chart-check/chart-check}

# name | arguments (word-split on purpose)
COMBOS=(
  "default|"
  "istio|--set mesh.provider=istio"
  "linkerd|--set mesh.provider=linkerd"
  "postgres|--set storage.default=postgres"
  "nats-3|--set nats.replicas=3"
  "istio+postgres|--set mesh.provider=istio --set storage.default=postgres"
  "linkerd+postgres+nats-3|--set mesh.provider=linkerd --set storage.default=postgres --set nats.replicas=3"
  "istio+seed-breaker|-f helm/examples/seed-circuit-breaker.yaml"
  "external-services|-f helm/examples/external-services.yaml"
  "default@k8s-1.29|--kube-version 1.29"
  "default@k8s-1.37|--kube-version 1.37"
  "scheduling-and-extras|-f helm/tests/good-values/scheduling-and-extras.yaml"
  "istio+fenced|--set mesh.provider=istio -f helm/tests/good-values/observed-and-fenced.yaml"
  "linkerd+fenced|--set mesh.provider=linkerd -f helm/tests/good-values/observed-and-fenced.yaml"
  "istio+mesh-retries|--set mesh.provider=istio --set mesh.retries.internal=mesh"
  "linkerd+mesh-retries|--set mesh.provider=linkerd --set mesh.retries.internal=mesh --set nats.replicas=3"
  "external-nats-list|--set nats.external.url=nats://a:4222\,nats://b:4223 --set nats.streams.replicas=3"
  "istio+keycloak|-f helm/examples/identity-provider-keycloak.yaml"
  "linkerd+oidc+pool|--set mesh.provider=linkerd --set storage.default=postgres --set auth.issuer=https://sso.example.com/realms/sharemesh --set auth.jwksUri=https://sso.example.com/realms/sharemesh/protocol/openid-connect/certs --set database.pool=8 --set postgresql.maxConnections=300"
)

indent() { sed 's/^/    /'; }

failed_combos=0
passed_combos=0
skipped=0

run_chart_tests() {
  echo "== chart tests (helm/tests/chart_test.py)"
  if ! command -v python3 >/dev/null 2>&1; then
    echo "SKIPPED chart tests: no python3"
    skipped=$((skipped + 1))
    return
  fi
  CHART_CHECK="$KIT" python3 helm/tests/chart_test.py
  case $? in
    0) passed_combos=$((passed_combos + 1)) ;;
    3) skipped=$((skipped + 1)) ;;
    *) failed_combos=$((failed_combos + 1)) ;;
  esac
}

# The operators' view (observability.*): dashboard ConfigMap, PrometheusRule, ServiceMonitor.
run_observability_tests() {
  echo "== observability chart tests (helm/tests/observability_test.py)"
  CHART_CHECK="$KIT" python3 helm/tests/observability_test.py
  case $? in
    0) passed_combos=$((passed_combos + 1)) ;;
    3) skipped=$((skipped + 1)) ;;
    *) failed_combos=$((failed_combos + 1)) ;;
  esac
}

if [ -e "$KIT" ]; then
  for combo in "${COMBOS[@]}"; do
    name=${combo%%|*}
    args=${combo#*|}
    # shellcheck disable=SC2086 # the combination's arguments are meant to split
    out=$(python3 "$KIT" "$CHART" "${REL[@]}" -q $args 2>&1)
    rc=$?
    summary=$(tail -n 1 <<<"$out")
    if [ $rc -eq 2 ]; then
      # chart-check's own setup failed (e.g. its Python dependencies could not be installed).
      skipped=$((skipped + 1))
      printf '%-26s %s\n' "[$name]" "SKIPPED: chart-check could not run (setup error, exit 2):"
      tail -n 5 <<<"$out" | indent
    elif [ $rc -eq 0 ]; then
      passed_combos=$((passed_combos + 1))
      printf '%-26s %s\n' "[$name]" "$summary"
    else
      failed_combos=$((failed_combos + 1))
      printf '%-26s %s (chart-check exit %s)\n' "[$name]" "$summary" "$rc"
      indent <<<"$out"
    fi
  done
  run_chart_tests
  run_observability_tests
elif command -v helm >/dev/null 2>&1; then
  echo "helm-check: chart-check kit not found at $KIT: falling back to helm lint + helm template ($(helm version --short 2>/dev/null))"
  echo "SKIPPED schema validation of rendered objects against Kubernetes/Istio/Linkerd schemas (needs the chart-check kit)"
  skipped=$((skipped + 1))
  for combo in "${COMBOS[@]}"; do
    name=${combo%%|*}
    args=${combo#*|}
    # shellcheck disable=SC2086 # the combination's arguments are meant to split
    if out=$(helm lint --strict "$CHART" $args 2>&1 && helm template sharemesh "$CHART" -n sharemesh $args 2>&1 >/dev/null); then
      passed_combos=$((passed_combos + 1))
      printf '%-26s %s\n' "[$name]" "helm lint --strict + helm template: ok"
    else
      failed_combos=$((failed_combos + 1))
      printf '%-26s %s\n' "[$name]" "FAILED"
      indent <<<"$out"
    fi
  done
  run_chart_tests
  run_observability_tests
else
  echo "SKIPPED helm-check: no chart-check kit at $KIT and no helm binary: the chart was NOT validated"
  echo "        (install helm, or put the shared kit beside the project, then run make helm-check)"
  skipped=$((skipped + 1))
fi

if [ "$skipped" -gt 0 ]; then
  echo "helm-check: $passed_combos passed, $failed_combos failed, $skipped skipped"
else
  echo "helm-check: $passed_combos passed, $failed_combos failed"
fi
[ "$failed_combos" -eq 0 ]
