#!/usr/bin/env bash
# Image test: build the runtime image from the host-built binary and run it.
#
# CI has no Docker engine, so this uses Debian's buildah (build) and podman (run)
# with the Dockerfile's `runtime-prebuilt` stage. That stage is FROM scratch and
# copies only from the build context, so it needs no registry access.
#
#   1. installs what is missing (buildah, podman, runc);
#   2. builds the multi-call binary on the host (release, glibc: docs/benchmarks.md
#      says why not static musl);
#   3. stages target/image-rootfs/ with scripts/stage-rootfs.sh (binary, links, its
#      C library, nsswitch.conf, CA bundle, /tmp) and builds the image;
#   4. checks the image: size, non-root user, OCI labels, no shell, files present;
#   5. runs `bronze-ingest --version` (and the default CMD) in the container;
#   6. when the caller provides a database and an S3 endpoint (DJANGO_DB_* and
#      S3_BUCKET or LAKE_URL, usually with AWS_*; the database needs the source
#      tables, the bucket must exist), runs bronze-ingest, silver-transform,
#      bronze-ingest again ("nothing new") and smoke-test inside the container, on
#      the host network, read-only root, all capabilities dropped, as in Kubernetes;
#      the database and the endpoint are named by a host name only the container's
#      /etc/hosts knows, so glibc's name lookup inside the image is exercised.
#
# Any step that cannot run (a package that cannot be installed, a podman that
# cannot start a container) fails the script with the reason: never a silent pass.
#
# Environment (all optional):
#   IMAGE             tag to build          (default localhost/robson/deep-storage:image-test)
#   MAX_IMAGE_BYTES   size budget, bytes    (default 30000000, issue #18; SPEC §10 allows 50 MB)
#   BIN_DIR           where the binary is   (default target/release)
#   SKIP_CARGO_BUILD  1 = use the binaries already in BIN_DIR
#   KEEP_IMAGE        1 = do not remove the image at the end
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${IMAGE:-localhost/robson/deep-storage:image-test}
MAX_IMAGE_BYTES=${MAX_IMAGE_BYTES:-30000000}
BIN_DIR=${BIN_DIR:-target/release}
ROOTFS=target/image-rootfs
# Every name the binaries read (SPEC §8 + job tuning); passed through when set.
ENV_NAMES=(
  DJANGO_DB_HOST DJANGO_DB_PORT DJANGO_DB_NAME DJANGO_DB_USER DJANGO_DB_PASSWORD
  DJANGO_DB_SSLMODE DJANGO_DB_SSLROOTCERT DJANGO_DB_STATEMENT_TIMEOUT
  AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT AWS_REGION S3_BUCKET LAKE_URL
  S3_CONDITIONAL_WRITES S3_MAX_RETRIES S3_TIMEOUT_SECS RUST_LOG
  BRONZE_LEASE_SECS BRONZE_LOOKBACK SILVER_MAX_VIOLATION_RATIO SILVER_SHARD_COUNT
)

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nimage-test: FAIL: %s\n' "$*" >&2; exit 1; }

# --- 1. tools -----------------------------------------------------------------
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand (this script targets Debian)"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install $* (or install them first)"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
    || die "apt-get install $* failed (see above); buildah/podman are required for the image test"
}

step "Checking tools"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt_install "${missing[@]}"
fi
for tool in buildah podman runc; do
  command -v "$tool" >/dev/null || die "$tool is still missing after apt-get install"
done

# podman/buildah on a machine without systemd or journald (CI VMs, containers):
# cgroupfs and a file event log work everywhere.
PODMAN=(podman --cgroup-manager=cgroupfs --events-backend=file)
BUILDAH=(buildah)
info_log=$(mktemp)
"${BUILDAH[@]}" info >"$info_log" 2>&1 || die "buildah cannot run: $(tail -n 5 "$info_log")"
"${PODMAN[@]}" info >"$info_log" 2>&1 || die "podman cannot run: $(tail -n 5 "$info_log")"
rm -f "$info_log"
echo "buildah $(buildah --version | awk '{print $3}'), $(podman --version), runc $(runc --version | awk 'NR==1{print $3}')"

# Ulimits no higher than this machine's hard limits (podman refuses otherwise).
clamp() { local want=$1 hard=$2; if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then echo "$want"; else echo "$hard"; fi; }
NOFILE=$(clamp 1024 "$(ulimit -Hn)")
NPROC=$(clamp 1024 "$(ulimit -Hu)")
RUN=("${PODMAN[@]}" run --rm --runtime runc --network host
     --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")

# --- 2. the binary -------------------------------------------------------------
if [ "${SKIP_CARGO_BUILD:-0}" != 1 ]; then
  step "Building the binary (release)"
  command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
  cargo build --locked --release -p robson-lake || die "cargo build --release -p robson-lake failed"
else
  step "Using the prebuilt binary from $BIN_DIR"
fi
[ -x "$BIN_DIR/robson-lake" ] || die "$BIN_DIR/robson-lake is missing or not executable"

# --- 3. image -----------------------------------------------------------------
step "Staging $ROOTFS"
scripts/stage-rootfs.sh "$BIN_DIR/robson-lake" "$ROOTFS" || die "staging $ROOTFS failed"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
REVISION=$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)

step "Building $IMAGE (target runtime-prebuilt)"
"${BUILDAH[@]}" build --target runtime-prebuilt -f Dockerfile -t "$IMAGE" \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED" \
  . || die "buildah build failed"
cleanup() {
  if [ "${KEEP_IMAGE:-0}" != 1 ]; then "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# --- 4. image checks ----------------------------------------------------------
step "Checking the image"
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
printf 'size: %s bytes (%s MB), budget %s bytes\n' "$size" "$(awk -v s="$size" 'BEGIN{printf "%.1f", s/1e6}')" "$MAX_IMAGE_BYTES"
[ "$size" -lt "$MAX_IMAGE_BYTES" ] || die "image is $size bytes, budget is $MAX_IMAGE_BYTES"

user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[ "$user" = "65532:65532" ] || die "image user is '$user', expected 65532:65532"
for label in org.opencontainers.image.title org.opencontainers.image.version \
             org.opencontainers.image.source org.opencontainers.image.licenses; do
  value=$("${PODMAN[@]}" image inspect --format "{{index .Config.Labels \"$label\"}}" "$IMAGE")
  [ -n "$value" ] && [ "$value" != "<no value>" ] || die "label $label missing"
  echo "$label=$value"
done

ctr=$("${PODMAN[@]}" create --runtime runc "$IMAGE")
files=$("${PODMAN[@]}" export "$ctr" | tar -t)
"${PODMAN[@]}" rm -f "$ctr" >/dev/null
for f in etc/ssl/certs/ca-certificates.crt etc/nsswitch.conf usr/local/bin/bronze-ingest \
         usr/local/bin/silver-transform usr/local/bin/smoke-test usr/local/bin/lake-maintain \
         usr/local/bin/lake; do
  grep -qx "$f" <<<"$files" || die "$f missing from the image"
done
grep -qE '^lib(64)?/.*ld-linux[^/]*\.so\.[0-9]+$' <<<"$files" || die "the image has no dynamic loader (ld-linux)"
if grep -qE '^(bin|usr/bin)/(sh|bash|busybox)$' <<<"$files"; then
  die "the image contains a shell"
fi
echo "files: $(wc -l <<<"$files") entries, no shell"

# The archive `just image-save` writes for `k3s ctr images import` (nodes
# without a registry): it must load back as the same image.
step "Saving $IMAGE as a docker-archive (what k3s ctr images import reads)"
archive=target/image-test.tar
rm -f "$archive"
"${BUILDAH[@]}" push "$IMAGE" "docker-archive:$archive:$IMAGE" >/dev/null || die "buildah push docker-archive failed"
# Listed into a variable first: `tar | grep -q` fails under pipefail when grep
# stops reading early and tar dies of SIGPIPE (CI saw exactly that).
members=$(tar -tf "$archive") || die "$archive is not a tar archive"
grep -qx manifest.json <<<"$members" || die "$archive has no manifest.json (not a docker-archive)"
loaded=$("${PODMAN[@]}" load -i "$archive" 2>&1) || die "podman load of $archive failed: $loaded"
grep -q "$IMAGE" <<<"$loaded" || die "loading $archive did not give back $IMAGE: $loaded"
echo "archive: $(du -h "$archive" | cut -f1), loads back as $IMAGE"
rm -f "$archive"

# --- 5. run -------------------------------------------------------------------
step "podman run $IMAGE bronze-ingest --version"
out=$("${RUN[@]}" "$IMAGE" bronze-ingest --version 2>&1) \
  || die "bronze-ingest --version failed in the container: $out"
echo "$out"
grep -q "$VERSION" <<<"$out" || die "bronze-ingest --version does not print the version $VERSION: '$out'"
for b in silver-transform smoke-test lake-maintain; do
  out=$("${RUN[@]}" "$IMAGE" "$b" --version 2>&1) || die "$b --version failed in the container: $out"
  echo "$out"
  grep -q "$VERSION" <<<"$out" || die "$b --version does not print the version $VERSION: '$out'"
done
"${RUN[@]}" "$IMAGE" >/dev/null 2>&1 || die "the default CMD (bronze-ingest --help) failed"
if "${RUN[@]}" "$IMAGE" sh -c true >/dev/null 2>&1; then die "a shell ran inside the image"; fi
echo "default CMD ok; no shell"

# --- 6. real runs against the caller's PostgreSQL and S3 -----------------------
if [ -z "${DJANGO_DB_HOST:-}" ] || { [ -z "${S3_BUCKET:-}" ] && [ -z "${LAKE_URL:-}" ]; }; then
  step "SKIPPED the real run: DJANGO_DB_HOST and S3_BUCKET (or LAKE_URL) are not set"
  echo "image-test: image checks passed; no database/S3 given, so no job ran in the container"
  exit 0
fi

# The caller's loopback services under a name only the container's /etc/hosts
# has (--add-host): the jobs resolve it with the image's glibc, as they resolve
# postgres.robson-prod.svc in the cluster.
NAME_IN_IMAGE=lake-image-test-host
if [[ "$DJANGO_DB_HOST" =~ ^(127\.0\.0\.1|localhost)$ ]]; then export DJANGO_DB_HOST=$NAME_IN_IMAGE; fi
if [ -n "${AWS_ENDPOINT:-}" ]; then
  AWS_ENDPOINT=$(sed -E "s#//(127\.0\.0\.1|localhost)([:/]|\$)#//$NAME_IN_IMAGE\2#" <<<"$AWS_ENDPOINT")
  export AWS_ENDPOINT
fi
env_args=(-e LOG_FORMAT=json)
for name in "${ENV_NAMES[@]}"; do
  if [ -n "${!name+x}" ]; then env_args+=(-e "$name"); fi
done
# As in Kubernetes: read-only root, scratch on /tmp, no capabilities, no privilege gain.
JOB_RUN=("${RUN[@]}" --read-only --tmpfs /tmp:rw,size=256m --cap-drop ALL
         --security-opt no-new-privileges --add-host "$NAME_IN_IMAGE:127.0.0.1"
         "${env_args[@]}" "$IMAGE")
for cmd in bronze-ingest silver-transform bronze-ingest lake-maintain smoke-test; do
  step "podman run … $cmd (DB ${DJANGO_DB_HOST}:${DJANGO_DB_PORT:-5432}, lake ${S3_BUCKET:-$LAKE_URL})"
  rc=0
  out=$("${JOB_RUN[@]}" "$cmd" 2>&1) || rc=$?
  printf '%s\n' "$out"
  [ "$rc" = 0 ] || die "$cmd exited $rc inside the container"
done
# The smoke test's DNS line shows the lookup inside the image.
if [ "$DJANGO_DB_HOST" = "$NAME_IN_IMAGE" ]; then
  grep -q "$NAME_IN_IMAGE resolves to 127.0.0.1" <<<"$out" \
    || die "smoke-test did not resolve $NAME_IN_IMAGE inside the image"
  echo "name lookup inside the image: $NAME_IN_IMAGE resolves (glibc, /etc/hosts)"
fi
echo
echo "image-test: PASS ($IMAGE, $size bytes; bronze-ingest, silver-transform, lake-maintain and smoke-test ran in the container)"
