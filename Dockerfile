# syntax=docker/dockerfile:1
# One image, all jobs (bronze-ingest, silver-transform, smoke-test, lake-maintain, lake) in one
# glibc executable on `scratch` with only the C library it links (loader, libc,
# libm, libgcc_s): no shell, no package manager, non-root. glibc, not static
# musl: musl ran bronze at 1.32x the time (docs/benchmarks.md).
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
#   builder           compiles the binary (rust:1-bookworm) and stages the root file
#                     system with scripts/stage-rootfs.sh, as scripts/image-test.sh does.
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
# target/image-rootfs = usr/local/bin/robson-lake and its links, the C library,
# etc/nsswitch.conf, etc/ssl/certs/ca-certificates.crt and tmp/ (1777), staged by
# scripts/stage-rootfs.sh.
COPY target/image-rootfs/ /
LABEL org.opencontainers.image.title="robson-deep-storage" \
      org.opencontainers.image.description="Robson deep storage batch jobs: bronze-ingest, silver-transform, smoke-test, lake-maintain" \
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
# Builds for the platform it runs on (amd64 or arm64 alike, `docker buildx build
# --platform …` for another one): the binary and the C library staged next to it
# come from this same image, so their versions match.
# The commit `--version` names (.git is not in the build context).
ARG REVISION=unknown
WORKDIR /src
COPY . .
# target/ and the cargo registry are cache mounts, so the root file system is
# staged out to /rootfs.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    LAKE_GIT_COMMIT="${REVISION}" cargo build --locked --release -p robson-lake \
 && scripts/stage-rootfs.sh target/release/robson-lake /rootfs

# ---------------------------------------------------------------------------
FROM scratch AS runtime
ARG VERSION
ARG REVISION
ARG CREATED
COPY --from=builder /rootfs/ /
LABEL org.opencontainers.image.title="robson-deep-storage" \
      org.opencontainers.image.description="Robson deep storage batch jobs: bronze-ingest, silver-transform, smoke-test, lake-maintain" \
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
