#!/usr/bin/env bash
# The baseline baton is measured against: the controller of the original
# post, as it describes it. A loop, outside the pods, that polls the health
# endpoint of every pod of the app with curl and, when the pod labelled
# active is unhealthy and another one is healthy, swaps the `role` labels
# with kubectl. Nothing else: no lease, no watch, no precondition.
#
# usage: baseline-controller.sh --namespace NS --app NAME [--interval 60]
#          [--port 8080] [--path /healthz] [--timeout 1] [--label role]
# Needs kubectl (PATH or $KUBECTL) and curl; KUBECONFIG as usual. Run it
# where pod IPs are reachable (the local cluster: inside its netns).
#
# Log lines on stdout, each starting with the epoch time in seconds:
#   <t> poll <n> start | <t> poll <n> health <pod>=<ok|fail> ...
#   <t> swap from=<old> to=<new>   (the decision; the label writes follow)
#   <t> poll <n> end
# With BASELINE_COST_FILE set, every kubectl run appends one line to it
# (GNU time): "<poll> <wall s> <user s> <sys s> <max RSS KiB>".
set -uo pipefail

ns=default app= interval=60 port=8080 path=/healthz timeout=1 label=role
while [ $# -gt 0 ]; do
  case $1 in
    --namespace) ns=$2; shift 2 ;;
    --app) app=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$app" ] || { echo "--app is required" >&2; exit 2; }
kubectl_bin=${KUBECTL:-kubectl}
cost_file=${BASELINE_COST_FILE:-}
poll=0

now() { date +%s.%N; }
k() {
  if [ -n "$cost_file" ] && [ -x /usr/bin/time ]; then
    /usr/bin/time -a -o "$cost_file" -f "$poll %e %U %S %M" "$kubectl_bin" -n "$ns" "$@"
  else
    "$kubectl_bin" -n "$ns" "$@"
  fi
}

trap 'exit 0' TERM INT
while :; do
  poll=$((poll + 1))
  echo "$(now) poll $poll start"
  # name, IP and role of each pod of the app, one per line.
  pods=$(k get pods -l "app=$app" \
    -o jsonpath="{range .items[*]}{.metadata.name} {.status.podIP} {.metadata.labels.$label}{'\n'}{end}")
  active= healthy=() report=
  while read -r name ip role; do
    [ -n "$name" ] || continue
    state=fail
    if [ -n "$ip" ] && curl -fsS -o /dev/null --max-time "$timeout" "http://$ip:$port$path" 2>/dev/null; then
      state=ok
      healthy+=("$name")
    fi
    report+=" $name=$state"
    [ "$role" = active ] && active=$name
  done <<<"$pods"
  echo "$(now) poll $poll health$report"

  active_ok=no
  for h in "${healthy[@]}"; do [ "$h" = "$active" ] && active_ok=yes; done
  if [ "$active_ok" = no ] && [ "${#healthy[@]}" -gt 0 ]; then
    new=${healthy[0]}
    echo "$(now) swap from=${active:-none} to=$new"
    # The swap: the new pod first (the Service never runs empty), then the old one.
    k label pod "$new" "$label=active" --overwrite >/dev/null
    [ -n "$active" ] && k label pod "$active" "$label=passive" --overwrite >/dev/null
    # Every other pod passive, so a fresh pod (no label yet) is clearly a standby.
    for h in "${healthy[@]}"; do
      [ "$h" = "$new" ] || k label pod "$h" "$label=passive" --overwrite >/dev/null
    done
  fi
  echo "$(now) poll $poll end"
  sleep "$interval" &
  wait $!
done
