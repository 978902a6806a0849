# syntax=docker/dockerfile:1
# Warren's three images from one build: the `warren` binary (operator and CLI) and the two ADR-029
# workers, each in a distroless, non-root image (uid 65532, as the chart and the Worker pods run).
#   docker build -t warren:0.1.0 .                              # the operator (last stage)
#   docker build --target orders -t warren-orders:0.1.0 .
#   docker build --target inventory -t warren-inventory:0.1.0 .
# scripts/kind-e2e.sh builds and loads all three; the chart and manifests/workers name these tags.
# scripts/node-e2e.sh makes the same images without Docker (scripts/node-e2e/oci-image.py).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build between image builds; the binaries are copied
# out because the target cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p warren-operator --bin warren \
        -p warren-orders --bin orders -p warren-inventory --bin inventory \
    && cp target/release/warren target/release/orders target/release/inventory /usr/local/bin/

# glibc and CA certificates, nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot AS orders
COPY --from=build /usr/local/bin/orders /usr/local/bin/orders
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orders"]

FROM gcr.io/distroless/cc-debian12:nonroot AS inventory
COPY --from=build /usr/local/bin/inventory /usr/local/bin/inventory
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/inventory"]

FROM gcr.io/distroless/cc-debian12:nonroot AS warren
COPY --from=build /usr/local/bin/warren /usr/local/bin/warren
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/warren"]
CMD ["operator"]
