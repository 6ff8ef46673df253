# The two commands of the README (`make run`, `make test`) and the steps they are made of.
# Each installs what it needs first (scripts/setup), only when it is missing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export PATH := $(CURDIR)/end2end/node_modules/.bin:$(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)
# Leptos reads LEPTOS_OUTPUT_NAME when it is compiled: one value for every build, so that
# `cargo test` reuses the release build's artifacts instead of rebuilding every Leptos crate.
export LEPTOS_OUTPUT_NAME := flyby

SSR := --no-default-features --features ssr
# The Rust tests start flyby-local in process, and its isolated network makes network
# namespaces: as root, or else in a user namespace of their own, where the process is root
# (src/local/network.rs). flyby-local's binary enters one by itself.
NAMESPACES := $(if $(filter 0,$(shell id -u)),,unshare --user --map-root-user)
WASM := --lib --no-default-features --target wasm32-unknown-unknown

.PHONY: run test soak fuzz setup-build setup-test build fmt-check lint deploy-check unit e2e bench clean

## Run the whole system locally: the local Fly platform with two launcher Machines.
run: build
	target/release/flyby-local --timings fly

## Every check CI runs: format, lints, Rust tests, browser tests.
test: setup-test fmt-check lint build deploy-check unit e2e

## The heavy load test (50 visitors, 200 launches, cap 8), kept out of `make test`.
soak: build
	$(NAMESPACES) cargo test --release $(SSR) --test system soak:: -- --ignored --nocapture

## Coverage-guided fuzzing of the affinity decision and the parsers (FUZZ_SECONDS each, default
## 600). Needs cargo-fuzz (installed when missing); libFuzzer's flags need nightly features,
## which RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain. No sanitizer (`-s none`): the code
## under test is safe Rust, so AddressSanitizer finds nothing the assertions do not, and its
## build takes over 30 minutes on 2 cores (9 without). Then each corpus is minimised to the
## smallest set of inputs with the same coverage (libFuzzer's set-cover merge), which is what
## is committed in fuzz/corpus and what `cargo test` replays (tests/system/fuzz_corpus.rs).
FUZZ_SECONDS ?= 600
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && host=$$(rustc -vV | sed -n 's/^host: //p') && for target in affinity parsers; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s none $$target -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096; \
		rm -rf corpus/$$target.min && mkdir corpus/$$target.min; \
		target/$$host/release/$$target -set_cover_merge=1 -use_counters=0 -use_value_profile=0 \
			corpus/$$target.min corpus/$$target; \
		rm -rf corpus/$$target && mv corpus/$$target.min corpus/$$target; \
	done

setup-build:
	scripts/setup build

setup-test:
	scripts/setup test

## The release build: target/site (scripts/site: the two apps' WASM bundles, the stylesheet,
## public/, their compressed variants), target/release/flyby and target/release/flyby-local.
## The Dockerfile's build stage runs this same target.
build: setup-build
	scripts/site
	cargo build --release $(SSR) --bin flyby --bin flyby-local

fmt-check:
	cargo fmt --all -- --check

lint: setup-build
	scripts/features-unified
	cargo clippy --no-default-features --features bench --all-targets -- -D warnings
	cargo clippy $(WASM) --features launcher-bundle -- -D warnings
	cargo clippy $(WASM) --features machine-bundle -- -D warnings

## The deploy recipe without Docker: hadolint on the Dockerfile, fly.toml against the real flyby,
## the image against make build (scripts/deploy-check).
deploy-check: build
	scripts/deploy-check

## The system tests each start platforms of their own and mostly wait for Machines: six at a
## time, whatever the number of cores (README, Tests).
unit: build
	$(NAMESPACES) cargo test --release $(SSR) -- --test-threads=6

e2e: build setup-test
	cd end2end && npx playwright test

## Every figure of BENCHMARKS.md in one table (criterion, wrk, Playwright): scripts/bench.
bench: build
	scripts/setup bench
	scripts/bench

clean:
	cargo clean
	rm -rf end2end/node_modules end2end/test-results
