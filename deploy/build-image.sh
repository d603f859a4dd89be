#!/bin/sh
# Builds the agent-proxy container image from a built binary, pulling nothing (deploy/Containerfile).
#
#   deploy/build-image.sh [BINARY] [TAG]
#
# BINARY defaults to target/release/agent-proxy, TAG to localhost/agent-proxy:latest. The build
# context is made next to the binary (BINARY's directory/image-context), never in the source tree.
set -eu
bin=${1:-target/release/agent-proxy}
tag=${2:-localhost/agent-proxy:latest}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$bin" ] || { echo "build-image.sh: no binary at $bin (cargo xtask build)" >&2; exit 1; }
ctx=$(cd "$(dirname "$bin")" && pwd)/image-context
root=$ctx/rootfs
rm -rf "$ctx"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/etc/agent-proxy" "$root/run/agent-proxy" "$root/tmp"
cp "$bin" "$root/usr/local/bin/agent-proxy"
# A dynamically linked binary: the loader and every library ldd resolves, at the same paths.
for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# Verified TLS to the intakes uses the system bundle (the binary also carries webpki-roots).
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
"$bin" init --preset datadog > "$root/etc/agent-proxy/agent-proxy.toml"
podman build --pull=never --tag "$tag" --file "$here/Containerfile" "$ctx"
