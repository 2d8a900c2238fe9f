#!/usr/bin/env bash
# Stages the image's root file system: the multi-call binary and its links, the
# C library it is linked against, the CA bundle and /tmp. Used by the Dockerfile's
# builder stage and by scripts/image-test.sh (the runtime-prebuilt stage), so
# both images hold the same files.
#
#   scripts/stage-rootfs.sh BINARY ROOTFS
#
# The binary is a glibc executable (the host target): on this workload musl ran
# bronze at 1.32x of glibc's time (docs/benchmarks.md, "the image's binary"), so
# the image carries glibc's loader and libraries instead of being static, as
# distroless/cc does. They are copied from the machine that linked the binary
# (`ldd` names them), so the versions match by construction. Name lookups
# (glibc >= 2.34 has the files and dns modules inside libc.so.6) read
# /etc/hosts, then DNS, per the nsswitch.conf written here.
set -euo pipefail

bin=${1:?usage: stage-rootfs.sh BINARY ROOTFS}
rootfs=${2:?usage: stage-rootfs.sh BINARY ROOTFS}
die() { echo "stage-rootfs: $*" >&2; exit 1; }

[ -x "$bin" ] || die "$bin is missing or not executable"
command -v ldd >/dev/null || die "ldd not found (Debian: libc-bin)"
libs=$(ldd "$bin") || die "ldd $bin failed: is it a dynamic glibc executable of this machine?"
if grep -q "not found" <<<"$libs"; then die "$bin needs libraries this machine lacks: $libs"; fi

rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
# One multi-call executable; the jobs are links to it (robson-lake/src/main.rs).
install -m 0755 "$bin" "$rootfs/usr/local/bin/robson-lake"
for b in bronze-ingest silver-transform smoke-test lake-maintain lake; do ln -s robson-lake "$rootfs/usr/local/bin/$b"; done
# The loader and every library at the path the binary asks for (linux-vdso has no file).
for path in $(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$libs"); do
  mkdir -p "$rootfs$(dirname "$path")"
  cp -L "$path" "$rootfs$path"
done
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
echo "staged $rootfs: $(find "$rootfs" -type f | wc -l) files, $(du -sh "$rootfs" | cut -f1)"
