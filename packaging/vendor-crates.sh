#!/usr/bin/env bash
# vendor-crates.sh CRATE_FILE...
#
# Prepares an offline build: unpacks each downloaded `NAME-VERSION.crate` into
# vendor/NAME-VERSION with the checksum file cargo expects, and points cargo at
# vendor/ instead of crates.io (.cargo/config.toml). Run from the source root; used by
# the RPM specs, the PKGBUILD and Qubes Builder, whose builds have no network. Cargo
# still checks each crate against the checksum in Cargo.lock, so a wrong crate fails.
set -euo pipefail

(($# > 0)) || {
    echo "usage: vendor-crates.sh CRATE_FILE..." >&2
    exit 2
}
[[ -f Cargo.lock ]] || {
    echo "vendor-crates.sh: run from the source root (no Cargo.lock here)" >&2
    exit 1
}

mkdir -p vendor .cargo
for crate in "$@"; do
    name=$(basename -- "$crate" .crate)
    [[ $name =~ ^[A-Za-z0-9_-]+-[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
        echo "vendor-crates.sh: $crate: want NAME-VERSION.crate" >&2
        exit 1
    }
    sum=$(sha256sum <"$crate")
    sum=${sum%% *}
    rm -rf -- "vendor/$name"
    tar -xzf "$crate" -C vendor --no-same-owner
    [[ -f vendor/$name/Cargo.toml ]] || {
        echo "vendor-crates.sh: $crate did not unpack to vendor/$name" >&2
        exit 1
    }
    printf '{"files":{},"package":"%s"}\n' "$sum" >"vendor/$name/.cargo-checksum.json"
done
cat >.cargo/config.toml <<'TOML'
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor"
TOML
