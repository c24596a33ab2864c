# The verbs of baton. `make test` is what CI runs.
CARGO ?= cargo
BIN_DIR := $(CURDIR)/target/debug
CLUSTER := tests/cluster
export BATON_BIN_DIR := $(BIN_DIR)
export KUBECONFIG := $(CURDIR)/target/cluster/kubeconfig

.PHONY: build test unit e2e cluster-binaries cluster-up cluster-down shell lint demo image release bench

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

## Benchmarks (never part of `make test`): baton vs the polling baseline on a
## fresh cluster of their own; report in target/bench/. Counts: BENCH_ARGS.
bench: build cluster-binaries
	BATON_CLUSTER_DIR=$(CURDIR)/target/cluster-bench BATON_NETNS=baton-bench \
	  $(CLUSTER)/with-cluster.sh $(BIN_DIR)/baton-bench --out target/bench $(BENCH_ARGS)

## Build (once per version, cached in ~/.cache/baton) the upstream components,
## and helm and promtool, which check the manifests (tests/tests/manifests.rs).
cluster-binaries:
	$(CLUSTER)/build.sh >/dev/null
	$(CLUSTER)/build-helm.sh >/dev/null
	$(CLUSTER)/build-promtool.sh >/dev/null

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

## The seed's story on a fresh local control plane, narrated; stops it after.
demo:
	@tests/demo/demo.sh

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REPO ?= ghcr.io/baton-dev
MUSL := x86_64-unknown-linux-musl

## Container images (sidecar/Dockerfile, webhook/Dockerfile; the demo app
## from the sidecar's with build args), with podman or a running docker.
image:
	@engine=""; for e in podman docker; do \
	  command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1 && { engine=$$e; break; }; done; \
	if [ -z "$$engine" ]; then \
	  echo "make image: no container engine here (podman, or docker with a running daemon); no image built."; \
	  echo "            'make release' builds the static binaries without one."; exit 0; fi; \
	set -e; for spec in baton-sidecar:baton-sidecar:sidecar baton-webhook:baton-webhook:webhook baton-e2e:baton-demo-app:sidecar; do \
	  pkg=$${spec%%:*}; rest=$${spec#*:}; bin=$${rest%%:*}; file=$${rest#*:}/Dockerfile; \
	  desc=""; [ $$bin = baton-demo-app ] && desc="--build-arg DESCRIPTION=baton's demo app: hello world with a switchable /healthz"; \
	  $$engine build -f $$file --build-arg PACKAGE=$$pkg --build-arg BIN=$$bin --build-arg VERSION=$(VERSION) \
	    $${desc:+"$$desc"} $$( [ $$engine = podman ] && echo --ignorefile $$file.dockerignore ) \
	    -t $(IMAGE_REPO)/$$bin:$(VERSION) .; done; \
	$$engine images --filter reference='$(IMAGE_REPO)/baton-*:$(VERSION)'

## Static release binaries of the sidecar and the webhook (musl when its
## target is installed: rustup target add x86_64-unknown-linux-musl).
release:
	@if rustup target list --installed 2>/dev/null | grep -qx $(MUSL); then \
	  command -v musl-gcc >/dev/null 2>&1 || export CC_$(subst -,_,$(MUSL))=cc; \
	  $(CARGO) build --release --locked --target $(MUSL) -p baton-sidecar -p baton-webhook --bins || exit 1; \
	  dir=target/$(MUSL)/release; \
	else \
	  echo "make release: no $(MUSL) target (rustup target add $(MUSL)); building glibc binaries instead"; \
	  $(CARGO) build --release --locked -p baton-sidecar -p baton-webhook --bins || exit 1; \
	  dir=target/release; \
	fi; \
	ls -l $$dir/baton-sidecar $$dir/baton-webhook; file $$dir/baton-sidecar $$dir/baton-webhook 2>/dev/null || true
