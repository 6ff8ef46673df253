# syntax=docker/dockerfile:1
# The image of both Fly apps: the launcher (`flyby`, fly.toml) and every visitor's Machine
# (`flyby-machines`, which the launcher starts from this same image through FLY_IMAGE_REF).
#
# The build runs the same `make build` that `make run` and CI (`make test`) run, so CI exercises
# this recipe; `make deploy-check` checks this file against the Makefile and fly.toml.
#
# Debian 13 (trixie) on both sides: its nodejs is 20, what Playwright and the npm tools in
# end2end/ require (bookworm's is 18), and the runtime's glibc is the one the binary was linked
# against.

# Tools: what `make setup-build` installs (wasm-bindgen-cli, the wasm32 target, wasm-opt and
# esbuild from npm), by running its recipe, `scripts/setup build`, without the Makefile: this
# layer changes only with scripts/setup, Cargo.lock (wasm-bindgen's version) and end2end's npm
# lock. cargo-install's build directory is a cache mount: after a Cargo.lock change, the tools
# are relinked, not recompiled.
FROM rust:1.95-trixie AS tools
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's current nodejs 20 and npm, and brotli (scripts/site): unpinned on purpose, a
# pinned Debian revision disappears from the archive at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm brotli \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/setup scripts/setup
COPY Cargo.lock ./
COPY end2end/package.json end2end/package-lock.json end2end/
RUN --mount=type=cache,target=/root/.cache/cargo-install \
    CARGO_TARGET_DIR=/root/.cache/cargo-install scripts/setup build

# Skeleton: the manifests, the Makefile and the scripts its build runs, plus an empty stand-in
# for every target's root file, the stylesheet and the public folder (scripts/site), so that the
# dependency layer below is rebuilt only when those change, not on every edit of the sources.
FROM tools AS skeleton
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . .
RUN mkdir /skeleton \
    && cp -r .cargo Cargo.toml Cargo.lock Makefile scripts /skeleton/ \
    && cargo metadata --no-deps --format-version 1 | node -e ' \
        const path = require("path"); \
        const meta = JSON.parse(require("fs").readFileSync(0, "utf8")); \
        for (const p of meta.packages) { \
          const root = path.dirname(p.manifest_path); \
          for (const t of p.targets) console.log("rs " + path.relative(root, t.src_path)); \
        } \
        console.log("file style/main.css"); \
        console.log("dir public");' \
    | while read -r kind file; do \
        mkdir -p "/skeleton/$(dirname "$file")"; \
        case "$kind" in \
          rs) printf '%s\n' '#![allow(dead_code)]' 'fn main() {}' > "/skeleton/$file" ;; \
          file) : > "/skeleton/$file" ;; \
          dir) mkdir -p "/skeleton/$file" ;; \
        esac; \
      done

# Build: first the dependencies alone (the same `make build`, on the skeleton), then the sources.
FROM tools AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=skeleton /skeleton/ ./
# The stand-ins' own artifacts are removed (scripts/site builds the WASM in target/front and the
# site in target/bundle and target/site), so the real build below cannot take them for up to
# date: cargo compares modification times, and COPY keeps the checkout's.
RUN make build \
    && cargo clean --release --package flyby \
    && cargo clean --target-dir target/front --profile wasm-release \
        --target wasm32-unknown-unknown --package flyby \
    && rm -rf target/site target/bundle
COPY . .
# The guards prove the server and the WASM bundle are the real ones, not the skeleton's stand-ins.
RUN make build \
    && target/release/flyby --help | grep -q FLYBY_ROLE \
    && grep -q 'export function hydrate' target/site/pkg/*.js

# Runtime: no toolchain and no flyby-local; only the server and its site, run by a user
# without privileges. The binary needs only glibc and libgcc (TLS roots are compiled in).
FROM debian:trixie-slim AS runtime
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin flyby
WORKDIR /app
COPY --from=build /src/target/release/flyby /app/flyby
COPY --from=build /src/target/site /app/site
# Every address, IPv4 and IPv6: fly-proxy reaches a Machine on its private IPv4 address, the
# private network (6PN) on its IPv6 one (src/server/listen.rs).
ENV LEPTOS_SITE_ADDR=[::]:8080 \
    LEPTOS_SITE_ROOT=/app/site
USER 10001:10001
EXPOSE 8080
# What Fly sends by default and fly.toml's kill_signal; flyby stops gracefully on it (and on SIGTERM).
STOPSIGNAL SIGINT
ENTRYPOINT ["/app/flyby"]
