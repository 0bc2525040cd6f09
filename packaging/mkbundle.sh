#!/usr/bin/env bash
# mkbundle.sh OUT.tar DOM0_BINARY
#
# Writes the dom0 bundle that install-dom0.sh pulls from a VM: the dom0 binary, the
# provisioning script, the systemd units and preset, the default config and policy.
# The tar is byte-for-byte reproducible (sorted names, fixed modes, owner 0, mtime 0,
# ustar), so `sha256sum OUT.tar` in the VM and the hash install-dom0.sh computes in
# dom0 agree exactly when dom0 received what the VM built.
set -euo pipefail

(($# == 2)) || {
    echo "usage: mkbundle.sh OUT.tar DOM0_BINARY" >&2
    exit 2
}
out=$1
dom0_bin=$2
here=$(cd "$(dirname "$0")" && pwd)

[[ -f $dom0_bin && -x $dom0_bin ]] || {
    echo "mkbundle.sh: $dom0_bin: no such executable (run make static-dom0)" >&2
    exit 1
}

stage=$(mktemp -d)
trap 'rm -rf -- "$stage"' EXIT

# The members install-dom0.sh expects, named below in byte order (LC_ALL=C sort), the
# order it checks; keep the two lists in step.
install -m 0755 "$dom0_bin" "$stage/qvm-remote-dom0"
install -m 0755 "$here/dom0/qvm-remote-provision" "$stage/qvm-remote-provision"
install -m 0644 "$here/systemd/qvm-remote-dom0.service" "$stage/qvm-remote-dom0.service"
install -m 0644 "$here/systemd/qvm-remote-panel.service" "$stage/qvm-remote-panel.service"
install -m 0644 "$here/systemd/30-qvm-remote.preset" "$stage/30-qvm-remote.preset"
install -m 0644 "$here/dom0/remote.conf" "$stage/remote.conf"
install -m 0644 "$here/dom0/remote-policy" "$stage/remote-policy"

tmp_out="$out.tmp.$$"
LC_ALL=C tar --create --file "$tmp_out" --directory "$stage" \
    --format=ustar --sort=name --mtime=@0 \
    --owner=0 --group=0 --numeric-owner \
    30-qvm-remote.preset qvm-remote-dom0 qvm-remote-dom0.service \
    qvm-remote-panel.service qvm-remote-provision remote-policy remote.conf
mv -f -- "$tmp_out" "$out"
