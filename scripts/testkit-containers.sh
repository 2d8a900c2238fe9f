#!/usr/bin/env bash
# Runs a command against lake-testkit's container backend on a machine with no
# Docker engine and no image registry (CI, this project's machines):
#
#   scripts/testkit-containers.sh COMMAND [ARGS...]
#
#   1. installs podman, buildah, runc and mmdebstrap when missing (apt);
#   2. builds the two images lake-testkit runs, unless they exist, from Debian's
#      packages and PyPI (a root file system made by mmdebstrap, committed by
#      buildah):
#        localhost/lake-testkit/postgres:15      Debian bookworm + postgresql-15
#        localhost/lake-testkit/moto:VERSION     + python3-venv, moto[s3,server]
#                                                 at scripts/requirements.txt's version
#      (pip downloads moto's wheels here, then installs them offline in the
#      root file system, so the build needs no network inside it);
#   3. starts podman's Docker-compatible API (`podman system service`) on a
#      socket of its own, target/podman/podman-<pid>.sock, with the settings this
#      kind of machine needs (cgroupfs, a file event log, runc, ulimits a
#      sandbox allows: target/podman/containers.conf);
#   4. runs COMMAND with DOCKER_HOST on that socket, LAKE_TESTKIT=containers and
#      LAKE_TESTKIT_POSTGRES_IMAGE / LAKE_TESTKIT_S3_IMAGE naming the images;
#   5. on exit, removes the containers the run left (label
#      lake-testkit.run=<this script's pid>, from LAKE_TESTKIT_RUN) and stops
#      the service.
#
# On a laptop with Docker none of this is needed: lake-testkit finds the engine
# and pulls the public images (README, "Without Debian").
#
# Environment: REBUILD_IMAGES=1 rebuilds the images even when they exist.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ $# -gt 0 ] || { echo "usage: scripts/testkit-containers.sh COMMAND [ARGS...]" >&2; exit 2; }
die() { echo "testkit-containers: $*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

moto_version=$(sed -n 's/^moto\[s3,server\]==\([^[:space:]#;]*\).*/\1/p' scripts/requirements.txt | head -n 1)
[ -n "$moto_version" ] || die "no moto version pinned in scripts/requirements.txt"
PG_IMAGE=localhost/lake-testkit/postgres:15
S3_IMAGE=localhost/lake-testkit/moto:$moto_version
work=target/podman
mkdir -p "$work"

# --- 1. tools -----------------------------------------------------------------
missing=()
for tool in podman buildah runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  step "installing ${missing[*]} (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman and buildah on a machine without systemd (CI VMs, sandboxes), with
# ulimits no higher than this machine's hard limits (podman refuses otherwise).
clamp() { local want=$1 hard=$2; if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then echo "$want"; else echo "$hard"; fi; }
nofile=$(clamp 1024 "$(ulimit -Hn)")
nproc=$(clamp 1024 "$(ulimit -Hu)")
cat > "$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
export CONTAINERS_CONF=$PWD/$work/containers.conf

# --- 2. images ----------------------------------------------------------------
have_image() { [ -z "${REBUILD_IMAGES:-}" ] && buildah inspect --type image "$1" >/dev/null 2>&1; }

# commit_rootfs TAR IMAGE CONFIG...: an image of one layer, the root file
# system (the working container and the tar go, whether it works or not).
commit_rootfs() {
  local tar=$1 image=$2; shift 2
  local ctr status=0
  ctr=$(buildah from scratch)
  { buildah add --quiet "$ctr" "$tar" / >/dev/null && buildah config "$@" "$ctr" &&
    buildah commit --quiet "$ctr" "$image" >/dev/null; } || status=$?
  buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -f "$tar"
  [ "$status" = 0 ] || die "buildah could not commit $image"
}

# Only what the servers need: no docs, man pages or translations.
slim=(--variant=apt --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
      --dpkgopt='path-exclude=/usr/share/locale/*')

if ! have_image "$PG_IMAGE"; then
  step "building $PG_IMAGE (mmdebstrap bookworm + postgresql-15, buildah)"
  start=$(date +%s)
  mmdebstrap "${slim[@]}" --include=postgresql-15 bookworm "$work/postgres.tar" > "$work/postgres-build.log" 2>&1 \
    || { tail -20 "$work/postgres-build.log" >&2; die "mmdebstrap of the PostgreSQL image failed (log: $work/postgres-build.log)"; }
  commit_rootfs "$work/postgres.tar" "$PG_IMAGE" \
    --env PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin --user postgres \
    --port 5432 --label org.opencontainers.image.title=lake-testkit-postgres
  echo "built $PG_IMAGE in $(( $(date +%s) - start )) s"
fi

if ! have_image "$S3_IMAGE"; then
  step "building $S3_IMAGE (mmdebstrap bookworm + python3-venv, moto $moto_version from PyPI, buildah)"
  start=$(date +%s)
  wheels=$work/wheels
  rm -rf "$wheels"
  pip=.venv/bin/pip
  [ -x "$pip" ] || pip=pip3
  # Wheels for the image's Python (bookworm: CPython 3.11, glibc 2.36, this
  # machine's architecture), downloaded here.
  case $(dpkg --print-architecture) in
    amd64) arch=x86_64 ;;
    arm64) arch=aarch64 ;;
    *) die "no manylinux wheels for $(dpkg --print-architecture)" ;;
  esac
  platforms=()
  for tag in manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_34 manylinux_2_36; do platforms+=(--platform "${tag}_$arch"); done
  "$pip" download -q --disable-pip-version-check -d "$wheels" --only-binary=:all: \
    --python-version 3.11 --implementation cp "${platforms[@]}" --platform any \
    "moto[s3,server]==$moto_version" flask flask-cors \
    || die "pip could not download moto $moto_version's wheels"
  mmdebstrap "${slim[@]}" --include=python3,python3-venv \
    --customize-hook="copy-in $wheels /tmp" \
    --customize-hook='chroot "$1" python3 -m venv /opt/moto' \
    --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin /opt/moto/bin/pip install -q --disable-pip-version-check --no-index --find-links /tmp/wheels 'moto[s3,server]==$moto_version' flask flask-cors" \
    --customize-hook='rm -rf "$1/tmp/wheels"; ln -s /opt/moto/bin/moto_server "$1/usr/local/bin/moto_server"' \
    bookworm "$work/moto.tar" > "$work/moto-build.log" 2>&1 \
    || { tail -20 "$work/moto-build.log" >&2; die "mmdebstrap of the moto image failed (log: $work/moto-build.log)"; }
  rm -rf "$wheels"
  commit_rootfs "$work/moto.tar" "$S3_IMAGE" --entrypoint '["/usr/local/bin/moto_server"]' \
    --port 5000 --user nobody --label org.opencontainers.image.title=lake-testkit-moto
  echo "built $S3_IMAGE in $(( $(date +%s) - start )) s"
fi

# --- 3. the Docker API ----------------------------------------------------------
# A socket and a container label of this run's own: a concurrent run keeps its.
run=$$
socket=$PWD/$work/podman-$run.sock
rm -f "$socket"
podman system service --time=0 "unix://$socket" > "$work/service-$run.log" 2>&1 &
service=$!
cleanup() {
  local ids
  ids=$(podman ps -aq --filter "label=lake-testkit.run=$run" 2>/dev/null || true)
  [ -z "$ids" ] || podman rm -f $ids >/dev/null 2>&1 || true
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  rm -f "$socket"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { cat "$work/service-$run.log" >&2; die "podman system service did not open $socket"; }

# --- 4. the command -------------------------------------------------------------
step "LAKE_TESTKIT=containers (DOCKER_HOST=unix://$socket): $*"
start=$(date +%s)
status=0
# MOTO_SERVER names no file: a moto started natively by mistake fails loudly.
DOCKER_HOST=unix://$socket LAKE_TESTKIT=containers LAKE_TESTKIT_RUN=$run MOTO_SERVER=/nonexistent/native-moto-under-containers \
  LAKE_TESTKIT_POSTGRES_IMAGE=$PG_IMAGE LAKE_TESTKIT_S3_IMAGE=$S3_IMAGE "$@" || status=$?
echo "testkit-containers: '$*' took $(( $(date +%s) - start )) s (exit $status)"
exit "$status"
