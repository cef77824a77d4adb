# syntax=docker/dockerfile:1
# Image of the monoskope server. The default command runs the in-cluster
# operator with the configuration file that the Helm chart mounts.
#
#   docker build -t monoskope:0.1.0 .

FROM rust:1.89-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds, so a rebuild after
# a source change compiles only this crate. The binary is copied out of the
# cached target directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin monoskope \
    && install -D -m 0755 target/release/monoskope /out/monoskope

# distroless/cc has glibc and libgcc, which the binary links against, and no
# shell or package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/monoskope /usr/local/bin/monoskope
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/monoskope"]
CMD ["run", "--config", "/etc/monoskope/config.yaml"]
