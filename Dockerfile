# syntax=docker/dockerfile:1
# The `warren` binary (operator and CLI) in a distroless, non-root image.
#   docker build -t warren:dev .
# The chart runs it as `warren operator`; scripts/kind-e2e.sh builds and loads it into kind.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between image builds; the binary is copied out
# because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p warren-operator --bin warren \
    && cp target/release/warren /usr/local/bin/warren

# glibc and CA certificates, nothing else; uid 65532 matches the chart's securityContext.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/warren /usr/local/bin/warren
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/warren"]
CMD ["operator"]
