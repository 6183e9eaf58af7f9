#!/bin/sh
# Rebuild every guest image into a temporary directory and compare it byte for byte with
# the committed one in bin/.
# Exit status: 0 identical, 1 some image differs or is missing, 2 gcc -m32 cannot build.
set -u
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf 'int main(void) { return 0; }\n' > "$tmp/probe.c"
if ! gcc -m32 -static -o "$tmp/probe" "$tmp/probe.c" > "$tmp/probe.log" 2>&1; then
    echo "check-reproducible: gcc -m32 cannot build (install gcc-multilib):" >&2
    sed 's/^/  /' "$tmp/probe.log" >&2
    exit 2
fi

if ! make -s -C "$here" BIN="$tmp/bin" OBJ="$tmp/obj" > "$tmp/make.log" 2>&1; then
    echo "check-reproducible: the build failed:" >&2
    cat "$tmp/make.log" >&2
    exit 1
fi

status=0
for f in "$here"/bin/* "$tmp"/bin/*; do
    name=$(basename "$f")
    [ -e "$here/bin/$name" ] || { echo "check-reproducible: bin/$name is built but not committed" >&2; status=1; continue; }
    [ -e "$tmp/bin/$name" ] || { echo "check-reproducible: bin/$name is committed but not built" >&2; status=1; continue; }
    [ "$f" = "$here/bin/$name" ] || continue
    if ! cmp -s "$here/bin/$name" "$tmp/bin/$name"; then
        echo "check-reproducible: bin/$name differs from a fresh build: $(cmp "$here/bin/$name" "$tmp/bin/$name" 2>&1)" >&2
        status=1
    fi
done
if [ $status -ne 0 ]; then
    if ! cmp -s "$here/bin/TOOLCHAIN" "$tmp/bin/TOOLCHAIN"; then
        echo "check-reproducible: the toolchain differs; committed images were built with:" >&2
        sed 's/^/  /' "$here/bin/TOOLCHAIN" >&2
        echo "this machine has:" >&2
        sed 's/^/  /' "$tmp/bin/TOOLCHAIN" >&2
    fi
    echo "check-reproducible: rebuild with 'make -C guest' and commit guest/bin" >&2
    exit 1
fi
echo "check-reproducible: all $(ls "$here/bin" | wc -l) files in guest/bin are identical to a fresh build"
