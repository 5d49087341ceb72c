#!/usr/bin/env bash
# A base image for docker/Dockerfile made on this machine, for where no image registry is reachable:
# Debian bookworm by debootstrap (its python3 is 3.11), torch and torchvision as the Makefile pins them, then
# `docker import`. Build the project's image on it with --build-arg BASE_IMAGE=<tag> (make docker-test does).
#
#   docker/local-base.sh [TAG]        (root: debootstrap and chroot need it)
#
# WHEELS: folders of wheels to install from before PyPI (a local mirror), bound into the chroot read-only.
# DEBIAN_MIRROR: where debootstrap downloads from. TORCH: the pip requirements of the torch build.
# The tag is reused when it exists: delete it (docker image rm TAG) to make it again.
set -euo pipefail

tag=${1:-cifake-base:bookworm-torch2.14.1}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
torch=${TORCH:-torch==2.14.1 torchvision==0.29.1}

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "Reusing the base image $tag"
  exit 0
fi
for tool in debootstrap chroot; do
  command -v "$tool" >/dev/null || { echo "error: $tool is needed to make the base image (apt-get install debootstrap)" >&2; exit 2; }
done

work=$(mktemp -d /var/tmp/cifake-base.XXXXXX)
mounts=()
cleanup() {
  local m
  for m in "${mounts[@]}"; do
    umount "$m" || { echo "error: could not unmount $m; $work is left as it is" >&2; return; }
  done
  rm -rf --one-file-system "$work"  # never through a mount into the wheel folders
}
trap cleanup EXIT
root=$work/rootfs

echo "Making the base image $tag: debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates bookworm "$root" "$mirror" >"$work/debootstrap.log" \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# pip in the chroot, and later in docker build, reaches PyPI as this machine does: its resolver, and its CA bundle
# (a proxy's own certificate authority included; Debian's pip trusts the system bundle).
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"

links=()
i=0
for folder in ${WHEELS:-}; do
  [ -d "$folder" ] || continue
  mkdir -p "$root/wheels/$i"
  mount --bind -o ro "$folder" "$root/wheels/$i"
  mounts+=("$root/wheels/$i")
  links+=(--find-links "/wheels/$i")
  i=$((i + 1))
done
echo "Installing $torch into it${WHEELS:+ (wheels from $WHEELS first)}"
# shellcheck disable=SC2086  # $torch is a list of requirements
chroot "$root" env PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --break-system-packages --no-cache-dir \
  --root-user-action=ignore "${links[@]}" $torch
chroot "$root" python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

for m in "${mounts[@]}"; do umount "$m"; done
mounts=()
rm -rf "$root/wheels" "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
: >"$root/etc/resolv.conf"  # docker writes its own at run time

echo "Importing it as $tag"
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$tag"
