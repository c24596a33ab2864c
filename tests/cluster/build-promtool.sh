#!/usr/bin/env bash
# Build promtool (to check the alert rules of manifests/observability) from
# the Go module proxy, cached (build-go-tool.sh); prints its bin directory.
# Its Go module versions are v0.<major*100+minor>.<patch>: v0.316.0 is
# Prometheus 3.16.0.
set -euo pipefail
version=${PROMETHEUS_VERSION:-v0.316.0}
exec "$(dirname "$0")/build-go-tool.sh" promtool github.com/prometheus/prometheus "$version"
