# The one image every Ebb process in compose.yaml runs: the `ebb` binary, whose subcommands are the
# services (`ebb gateway`, `ebb agent --site site-a`, `ebb sim serve`, `ebb admin migrate`, …).
#
#   docker build -t ebb:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the registry and the build between image builds; the binary is copied out of the
# cached target dir because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ebb \
    && cp target/release/ebb /usr/local/bin/ebb

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/ebb /usr/local/bin/ebb
ENTRYPOINT ["ebb"]
CMD ["--help"]
