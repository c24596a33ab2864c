# The verbs of baton. `make test` is what CI runs.
CARGO ?= cargo
BIN_DIR := $(CURDIR)/target/debug
CLUSTER := tests/cluster
export BATON_BIN_DIR := $(BIN_DIR)
export KUBECONFIG := $(CURDIR)/target/cluster/kubeconfig

.PHONY: build test unit e2e cluster-binaries cluster-up cluster-down shell lint

build:
	$(CARGO) build --workspace --bins --locked

## Unit tests, then end-to-end tests on a fresh local control plane.
test: unit e2e

unit:
	$(CARGO) test --workspace --lib --bins --locked

# Test binaries are built outside the cluster's network namespace (which
# reaches no registry), then run inside it.
e2e: build cluster-binaries
	$(CARGO) test -p baton-e2e --test '*' --locked --no-run
	$(CLUSTER)/with-cluster.sh $(CARGO) test -p baton-e2e --test '*' --locked --offline -- --test-threads=$${E2E_THREADS:-3}

## Build (once per version, cached in ~/.cache/baton) the upstream components.
cluster-binaries:
	$(CLUSTER)/build.sh >/dev/null

cluster-up: build cluster-binaries
	$(CLUSTER)/up.sh
	@echo "export KUBECONFIG=$(KUBECONFIG)"

cluster-down:
	$(CLUSTER)/down.sh

## A shell inside the local cluster's network namespace, with KUBECONFIG set.
shell:
	ip netns exec $${BATON_NETNS:-baton} env PATH="$$(cat target/cluster/bin-dir):$$PATH" bash

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
