#!/usr/bin/env bash
# Demo: build a 3-layer image under /tmp (each layer dir named by the sha256
# of a tar of its content, OCI whiteout formats), mount it with layerfs,
# look around, unmount.   LAYERFS=<program> overrides bin/layerfs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
layerfs=${LAYERFS:-$repo/bin/layerfs}
work=$(mktemp -d /tmp/layerfs-example.XXXXXX)
mnt=$work/merged
cleanup() {
    if grep -qs " $mnt " /proc/self/mountinfo; then fusermount3 -u "$mnt"; fi
    rm -rf "$work"
}
trap cleanup EXIT

# add_layer DIR: name the staged layer by the sha256 of its tar, print it
add_layer() {
    local sha
    sha=$(tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . |
          sha256sum | cut -d' ' -f1)
    mv "$1" "$work/layers/$sha"
    echo "$work/layers/$sha"
}
mkdir -p "$work/layers" "$mnt"

s=$work/stage-base                       # bottom layer: a tiny distro
mkdir -p "$s/etc" "$s/usr/bin" "$s/var/cache/apt"
printf 'NAME="Base"\nID=base\nVERSION_ID=1\n' > "$s/etc/os-release"
echo 'root:x:0:0:root:/root:/bin/sh' > "$s/etc/passwd"
echo 'Welcome to Base' > "$s/etc/motd"
printf '#!/bin/sh\necho tool\n' > "$s/usr/bin/tool"; chmod 755 "$s/usr/bin/tool"
echo old > "$s/var/cache/apt/pkgcache.bin"
echo old > "$s/var/cache/apt/srcpkgcache.bin"
base=$(add_layer "$s")

s=$work/stage-mid                        # middle: upgrade, drop the motd
mkdir -p "$s/etc"
printf 'NAME="Example"\nID=example\nVERSION_ID=2\n' > "$s/etc/os-release"
: > "$s/etc/.wh.motd"                    # OCI whiteout of etc/motd
echo 'example' > "$s/etc/hostname"
mid=$(add_layer "$s")

s=$work/stage-top                        # top: fresh apt cache (opaque)
mkdir -p "$s/var/cache/apt" "$s/app"
: > "$s/var/cache/apt/.wh..wh..opq"      # OCI opaque marker
echo new > "$s/var/cache/apt/pkgcache.bin"
echo 'print("hello")' > "$s/app/main.py"
top=$(add_layer "$s")

echo "layers (top first):"; printf '  %s\n' "$top" "$mid" "$base"
"$layerfs" -o "lowerdir=$top:$mid:$base" "$mnt"

echo; echo "\$ ls -la etc";                 (cd "$mnt" && ls -la etc)
echo; echo "\$ cat etc/os-release";         cat "$mnt/etc/os-release"
echo; echo "\$ ls var/cache/apt";           ls "$mnt/var/cache/apt"
echo; echo "\$ find . | wc -l";             (cd "$mnt" && find . | wc -l)
