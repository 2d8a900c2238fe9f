# syntax=docker/dockerfile:1
# One image, all binaries (bronze-ingest, silver-transform, smoke-test), static
# musl executables on `scratch`: no shell, no package manager, no libc, non-root.
#
#   docker build -t ghcr.io/robson/deep-storage:0.1.0 .            # full build (default target)
#   docker buildx build --platform linux/arm64 -t … .              # another architecture
#   buildah build -t ghcr.io/robson/deep-storage:0.1.0 .           # same, without a Docker engine
#   buildah build --target runtime-prebuilt -t … .                 # from host-built binaries
#
# Stages:
#   runtime-prebuilt  the runtime image from binaries built on the host and staged in
#                     target/image-rootfs/ by scripts/image-test.sh. It comes first and
#                     uses no base image, so building it needs neither a registry nor
#                     a container runtime for RUN steps (CI: buildah without Docker).
#   builder           compiles the static binaries (rust:1-bookworm + musl-tools).
#   runtime           the runtime image from the builder (the default, last stage).
# Both runtime stages must stay identical apart from where the root file system
# comes from; scripts/image-test.sh checks the user, labels and files.

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

# ---------------------------------------------------------------------------
FROM scratch AS runtime-prebuilt
ARG VERSION
ARG REVISION
ARG CREATED
# target/image-rootfs = usr/local/bin/{bronze-ingest,silver-transform,smoke-test},
# etc/ssl/certs/ca-certificates.crt and tmp/ (1777), see scripts/image-test.sh.
COPY target/image-rootfs/ /
LABEL org.opencontainers.image.title="robson-deep-storage" \
      org.opencontainers.image.description="Robson deep storage batch jobs: bronze-ingest, silver-transform, smoke-test" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/robson/deep-storage" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Robson"
# scratch has no PATH: set it so `podman run IMAGE bronze-ingest …` resolves.
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 65532 = "nonroot" in distroless; the Kubernetes manifests use the same ids.
USER 65532:65532
CMD ["/usr/local/bin/bronze-ingest", "--help"]

# ---------------------------------------------------------------------------
FROM docker.io/library/rust:1-bookworm AS builder
# The musl target of the platform being built (BuildKit and buildah set
# TARGETARCH: amd64 on x86_64, arm64 on Apple silicon and Graviton); the builder
# runs on that platform too, so no cross compiler is needed. TARGET overrides it.
ARG TARGETARCH
ARG TARGET
# The commit `--version` names (.git is not in the build context).
ARG REVISION=unknown
# musl-gcc compiles the C parts (zstd, aws-lc) for the musl target.
RUN case "${TARGET:-${TARGETARCH:-amd64}}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *-linux-musl) echo "${TARGET}" ;; \
      *) echo "unsupported platform ${TARGETARCH} (amd64 or arm64, or set TARGET)" >&2; exit 1 ;; \
    esac > /rust-target \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# `rustup target add` again: a no-op unless a rust-toolchain.toml in the sources
# pins another toolchain, which then gets the musl target too. target/ and the
# cargo registry are cache mounts, so the binaries are copied out to /rootfs.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(cat /rust-target)" \
 && rustup target add "${target}" \
 && LAKE_GIT_COMMIT="${REVISION}" cargo build --locked --release --target "${target}" \
      -p robson-lake \
 && mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/tmp \
 && chmod 1777 /rootfs/tmp \
 && install -m 0755 "target/${target}/release/robson-lake" /rootfs/usr/local/bin/robson-lake \
 && for bin in bronze-ingest silver-transform smoke-test lake; do \
      ln -s robson-lake "/rootfs/usr/local/bin/${bin}"; \
    done \
 && install -m 0644 /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt

# ---------------------------------------------------------------------------
FROM scratch AS runtime
ARG VERSION
ARG REVISION
ARG CREATED
COPY --from=builder /rootfs/ /
LABEL org.opencontainers.image.title="robson-deep-storage" \
      org.opencontainers.image.description="Robson deep storage batch jobs: bronze-ingest, silver-transform, smoke-test" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/robson/deep-storage" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Robson"
# scratch has no PATH: set it so `podman run IMAGE bronze-ingest …` resolves.
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
CMD ["/usr/local/bin/bronze-ingest", "--help"]
