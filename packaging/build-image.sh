#!/usr/bin/env bash
# Builds the gpumesh container image from an already built binary, without pulling any
# base image: the build context holds the binary (debug info stripped), the shared
# libraries ldd names and the dynamic loader, a static busybox with its applet links, and
# the few files under /etc that a non-root user needs (packaging/Containerfile says what
# the image expects).
#
# Usage: packaging/build-image.sh [BINARY] [TAG]
#   BINARY  the gpumesh binary (default: target/release/gpumesh)
#   TAG     the image's name (default: localhost/gpumesh:dev)
# Environment: BUSYBOX, a statically linked busybox (default: /bin/busybox, then
# /usr/bin/busybox); GPUMESH_IMAGE_STRIP=0 keeps the binary's debug info.
# Needs podman, ldd, and Debian's busybox-static (apt-get install podman busybox-static).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=${1:-$repo/target/release/gpumesh}
tag=${2:-localhost/gpumesh:dev}
uid=10001

fail() { echo "build-image: $*" >&2; exit 1; }

[ -f "$binary" ] && [ -x "$binary" ] ||
  fail "no executable gpumesh binary at $binary; build it first (cargo build --release -p gpumesh) or pass its path"
command -v podman >/dev/null || fail "podman is not installed (Debian: apt-get install podman runc)"
command -v ldd >/dev/null || fail "ldd is not installed (Debian: libc-bin)"

# ldd fails on a static binary, after saying so.
is_static() { grep -qE 'not a dynamic executable|statically linked' <<<"$(ldd "$1" 2>&1 || true)"; }
busybox=${BUSYBOX:-}
if [ -z "$busybox" ]; then
  for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ] && is_static "$candidate"; then busybox=$candidate; break; fi
  done
fi
[ -n "$busybox" ] && [ -x "$busybox" ] && is_static "$busybox" ||
  fail "no statically linked busybox found${BUSYBOX:+ at $BUSYBOX}; install it (Debian: apt-get install busybox-static) or set BUSYBOX"

version=$("$binary" --version | awk '{print $2}') || fail "$binary --version failed"
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc" "$root/tmp" "$root/var/lib" "$context/data"
chmod 1777 "$root/tmp"

# The binary, without its debug sections (under a third of the size; function names,
# and so backtraces, stay).
if [ "${GPUMESH_IMAGE_STRIP:-1}" != 0 ] && command -v strip >/dev/null; then
  strip --strip-debug -o "$root/usr/local/bin/gpumesh" "$binary"
else
  cp "$binary" "$root/usr/local/bin/gpumesh"
fi

# Its shared libraries and the loader, each at the path the binary will look for it
# (nothing, for a statically linked binary).
if ! is_static "$binary"; then
  libs=$(ldd "$binary") || fail "ldd $binary failed"
  if grep -q 'not found' <<<"$libs"; then
    fail "$binary needs libraries this machine lacks: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"
  fi
  while read -r path; do
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
  done < <(awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' <<<"$libs" | sort -u)
  [ -n "$(find "$root" -name 'ld-linux*' -print -quit)" ] || fail "ldd named no dynamic loader for $binary"
fi

# busybox and a link per applet (bin/sh, usr/sbin/httpd, usr/bin/wget…).
cp "$busybox" "$root/bin/busybox"
while read -r applet; do
  case $applet in bin/busybox | linuxrc) continue ;; esac
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
gpumesh:x:$uid:$uid:gpumesh:/var/lib/gpumesh:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
gpumesh:x:$uid:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

echo "building $tag from $binary (gpumesh $version, busybox $busybox)"
podman build --pull=never --layers=false -f "$repo/packaging/Containerfile" -t "$tag" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "$context"

size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $((size / 1000000)) MB ($size bytes)"
