# One image for every sharemesh service: `sharemesh serve <context>` picks what runs
# (catalog, reservation, payment, message, view, edge); `sharemesh token ...` mints a JWT.
#
#   docker build -t sharemesh:dev .          (or: make image)
#   docker run --rm -p 50051:50051 -p 9090:9090 -e NATS_URL=nats://host:4222 \
#     -e SHAREMESH_JWT_SECRET="$(openssl rand -base64 32)" sharemesh:dev serve catalog
#
# `serve` refuses to start without SHAREMESH_JWT_SECRET (every replica of every service needs the
# same one; the Helm chart generates it): the built-in development secret is public, and anyone
# holding it can mint any token. SHAREMESH_INSECURE_DEV_SECRET=true overrides that on a laptop.
#
# Build: release binary on the Rust toolchain image (no protoc needed: codegen uses protox).
# Run: distroless cc (glibc, libgcc, CA certificates; no shell, no package manager) as uid 10001,
# read-only root filesystem friendly: the binary writes only to /data (SQLite files).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit, the default builder).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sharemesh \
 && install -D -m 0755 target/release/sharemesh /out/usr/local/bin/sharemesh \
 && install -d -m 0750 -o 10001 -g 10001 /out/data

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/usr/local/bin/sharemesh /usr/local/bin/sharemesh
COPY --from=build --chown=10001:10001 /out/data /data
ENV SHAREMESH_GRPC_ADDR=0.0.0.0:50051 \
    SHAREMESH_METRICS_ADDR=0.0.0.0:9090 \
    SHAREMESH_DATA_DIR=/data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 50051 9090
ENTRYPOINT ["sharemesh"]
CMD ["serve", "catalog"]
