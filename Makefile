# The verbs of baton. `make test` is what CI runs.
CARGO ?= cargo
BIN_DIR := $(CURDIR)/target/debug
CLUSTER := tests/cluster
export BATON_BIN_DIR := $(BIN_DIR)
export KUBECONFIG := $(CURDIR)/target/cluster/kubeconfig
# Real nodes of the tests' cluster (and `make cluster-up`'s): two, so that
# node events (tests/tests/nodes.rs) have a surviving node. The demo runs
# one, the bench sets its own.
REAL_NODES ?= 2

.PHONY: build test unit e2e old-sidecar cluster-binaries cluster-up cluster-down shell lint demo image plugin release release-check release-index version bench kle-race

build:
	$(CARGO) build --workspace --bins --locked

## Unit tests, then end-to-end tests on a fresh local control plane.
test: unit e2e

unit:
	$(CARGO) test --workspace --lib --bins --locked

# Test binaries are built outside the cluster's network namespace (which
# reaches no registry), then run inside it.
e2e: build image old-sidecar cluster-binaries
	$(CARGO) test -p baton-e2e --test '*' --locked --no-run
	BATON_REAL_NODES=$(REAL_NODES) $(CLUSTER)/with-cluster.sh $(CARGO) test -p baton-e2e --test '*' --locked --offline --no-fail-fast -- --test-threads=$${E2E_THREADS:-3}

## The sidecar image of an earlier commit (tests/tests/upgrade.rs's group of
## two builds): built once per commit into ~/.cache/baton/old-sidecar,
## saved as target/image/baton-sidecar-old.tar for the nodes to import.
## About 20 minutes on a cold cache (2 cores shared with other builds;
## 7 min of CPU), seconds when cached.
old-sidecar:
	$(CLUSTER)/build-old-sidecar.sh >/dev/null

## Benchmarks (never part of `make test`) on a fresh cluster of their own:
## clients through the ClusterIP on the real node; baton vs the polling
## baseline, the webhook and the scale measure on KWOK nodes beside it;
## report in target/bench/. Counts: BENCH_ARGS. Every part measures the
## release binaries users run: the images' on the real node, the same files
## (target/image/bin) as the KWOK pods' processes and the webhook's.
bench: build image cluster-binaries kle-race
	BATON_CLUSTER_DIR=$(CURDIR)/target/cluster-bench BATON_NETNS=baton-bench BATON_KWOK_NODES=3 BATON_REAL_NODES=2 \
	  BATON_POD_BIN_DIR=$(CURDIR)/target/image/bin \
	  $(CLUSTER)/with-cluster.sh $(BIN_DIR)/baton-bench --out target/bench --bin-dir $(CURDIR)/target/image/bin $(BENCH_ARGS)

## kube-leader-election's racer for the bench: a crate outside the workspace
## (it needs kube 4), with its own lock file and target dir.
kle-race:
	$(CARGO) build --locked --manifest-path tests/kle-race/Cargo.toml --target-dir target/kle-race

## Build (once per version, cached in ~/.cache/baton) the upstream components
## (control plane, kubelet, kube-proxy, containerd, pause), and helm and promtool, which check the manifests (tests/tests/manifests.rs).
cluster-binaries:
	$(CLUSTER)/build.sh >/dev/null
	$(CLUSTER)/build-node.sh >/dev/null
	$(CLUSTER)/build-helm.sh >/dev/null
	$(CLUSTER)/build-promtool.sh >/dev/null

cluster-up: build image cluster-binaries
	BATON_REAL_NODES=$(REAL_NODES) $(CLUSTER)/up.sh
	@echo "export KUBECONFIG=$(KUBECONFIG)"

cluster-down:
	$(CLUSTER)/down.sh

## A shell inside the local cluster's network namespace, with KUBECONFIG set.
shell:
	ip netns exec $${BATON_NETNS:-baton} env PATH="$$(cat target/cluster/bin-dir):$$(cat target/cluster/node-bin-dir 2>/dev/null):$$PATH" bash

## rustfmt, clippy, and actionlint on .github/workflows (built once from the
## Go module proxy into ~/.cache/baton, then offline like the rest).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	"$$($(CLUSTER)/build-actionlint.sh)/actionlint" -no-color

## The seed's story on a fresh local control plane, narrated; stops it after.
demo:
	@tests/demo/demo.sh

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REPO ?= ghcr.io/baton-dev

# This machine's architecture: x86_64 (amd64) or aarch64 (arm64); CI builds
# each release architecture on a runner of its own.
IMAGE_TARGET := $(shell uname -m)-unknown-linux-gnu
IMAGE_BINS := baton-sidecar baton-webhook baton-demo-app

## Container images, the ones the local cluster's node runs: static release
## binaries (glibc with +crt-static: no musl toolchain needed) copied to
## target/image/bin, each wrapped by sidecar/Dockerfile (the one recipe;
## build args name the binary, its ports and description) with podman, or
## IMAGE_ENGINE=docker; saved as target/image/<name>.tar.
image:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(IMAGE_TARGET) \
	  -p baton-sidecar -p baton-webhook -p baton-e2e $(foreach b,$(IMAGE_BINS),--bin $(b))
	@mkdir -p target/image/bin
	@for b in $(IMAGE_BINS); do \
	  cmp -s target/$(IMAGE_TARGET)/release/$$b target/image/bin/$$b || \
	    cp -p target/$(IMAGE_TARGET)/release/$$b target/image/bin/$$b; done
	@$(CLUSTER)/build-images.sh $(IMAGE_REPO) $(VERSION)

## kubectl-baton, the kubectl plugin (docs/kubectl-baton.md), as a static
## release binary: copy target/x86_64-unknown-linux-gnu/release/kubectl-baton
## onto your PATH. `make release` builds it too.
plugin:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(IMAGE_TARGET) -p baton-sidecar --bin kubectl-baton
	@ls -l target/$(IMAGE_TARGET)/release/kubectl-baton

RELEASE_DIR ?= target/release-$(VERSION)

## The version every shipped file carries (Cargo.toml's workspace version).
version:
	@echo $(VERSION)

## Everything a release publishes for this machine's architecture, in
## $(RELEASE_DIR): static binaries, kubectl-baton archives with sha256
## checksums, the image archives, the packaged Helm chart, the Krew plugin
## manifest, a CycloneDX SBOM, the release notes (CHANGELOG.md) and
## SHA256SUMS (tests/release/release.sh). Nothing is pushed: the release
## workflow (.github/workflows/release.yml) runs this on an amd64 and an
## arm64 runner, then `make release-index` over both folders, then pushes.
release: release-check image plugin
	tests/release/release.sh build $(VERSION) $(RELEASE_DIR) $(IMAGE_TARGET)
	@ls -l $(RELEASE_DIR)

## Refuses a release whose files name another version than Cargo.toml's
## (the same check as the unit test in tests/src/release.rs).
release-check:
	$(CARGO) build --locked -p baton-e2e --bin baton-release
	target/debug/baton-release check

## Krew manifest, notes and SHA256SUMS over a release folder that holds the
## archives of several architectures.
release-index:
	$(CARGO) build --locked -p baton-e2e --bin baton-release
	tests/release/release.sh index $(VERSION) $(RELEASE_DIR)
