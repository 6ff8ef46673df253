# syntax=docker/dockerfile:1
# Build stage: the same `make build` that `make run` and CI use, so CI exercises this recipe.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Tools first (cargo-leptos, wasm-bindgen-cli, wasm-opt): a layer that only changes with them.
COPY Cargo.toml Cargo.lock Makefile ./
COPY scripts ./scripts
COPY end2end/package.json end2end/package-lock.json ./end2end/
RUN make setup-build
COPY . .
RUN make build

# Runtime stage: no toolchain, no flyby-local; only the server and its site.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home flyby
WORKDIR /app
COPY --from=build /src/target/release/flyby /app/flyby
COPY --from=build /src/target/site /app/site
ENV LEPTOS_SITE_ADDR=0.0.0.0:8080 \
    LEPTOS_SITE_ROOT=/app/site
USER flyby
EXPOSE 8080
CMD ["/app/flyby"]
