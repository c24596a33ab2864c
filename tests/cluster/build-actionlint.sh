#!/usr/bin/env bash
# Build actionlint (checks .github/workflows in `make lint`) from the Go
# module proxy, cached (build-go-tool.sh); prints its bin directory. Once
# built, `make lint` runs offline.
set -euo pipefail
version=${ACTIONLINT_VERSION:-v1.7.12}
module=github.com/rhysd/actionlint
exec "$(dirname "$0")/build-go-tool.sh" actionlint "$module" "$version" "-X $module.version=$version"
