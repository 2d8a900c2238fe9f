#!/bin/sh
# Prints the image the deployment runs, as deploy/components/image names it
# (newName:newTag), so that `just image`, `just image-save` and `just
# image-import` build and ship the very name the pods ask for. Without newName
# the manifests' own name stays (kustomize keeps `name`). A component pinned by
# digest has no tag: the release version from Cargo.toml is used, and the pods
# ask for the digest, which only a registry push gives (docs/deploy.md, Image).
set -eu
here=$(dirname "$0")
component=$here/components/image/kustomization.yaml
# The first value of key $1 (a list item's "- key:" too), without quotes or comment.
field() { sed -n "s/^[ -]*$1: *[\"']\{0,1\}\([^\"' #]*\).*/\1/p" "$component" | head -n 1; }
name=$(field newName)
if [ -z "$name" ]; then
  name=$(field name)
fi
tag=$(field newTag)
if [ -z "$tag" ]; then
  tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)
fi
if [ -z "$name" ] || [ -z "$tag" ]; then
  echo "image-name.sh: no newName/newTag in $component" >&2
  exit 1
fi
echo "$name:$tag"
