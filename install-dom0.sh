#!/usr/bin/env bash
# install-dom0.sh: installs, upgrades or removes qvm-remote in dom0. Runs in dom0.
#
#   install-dom0.sh VM [--sha256 HASH] [--from PATH] [--user USER] [--yes] [--enable]
#   install-dom0.sh VM --upgrade [--sha256 HASH] [--from PATH] [--user USER] [--yes]
#   install-dom0.sh [VM] --uninstall [--purge] [--yes]
#
# Install: pulls the dom0 bundle that `make print-hash` built in VM (one file, read
# with `qvm-run --pass-io`, at most 64 MiB) into a private temp dir, computes its
# SHA-256 and refuses to go on unless it equals --sha256 HASH or the hash you type
# after reading `make print-hash` in the VM. Then installs the binary, units and
# preset, writes the config and policy only where none exist, generates VM's key in
# dom0 (qvm-remote-provision: /dev/urandom, pushed into the VM on stdin, never in an
# argv) and starts the service for this boot only. --enable makes it start at every
# boot too, after `qvm-remote-dom0 enable` has stated the risk and you typed yes.
#
# Upgrade: the same checked pull; replaces the binary (a rename, so the running daemon
# is never left without one), provisioning script, units and preset, keeps config,
# policy and keys, and restarts the services that were running. It talks to the VM
# with qvm-run only, never through the daemon it replaces.
#
# Uninstall: stops and disables the services and removes what install put in place;
# config, policy, keys and state stay unless --purge. The audit log always stays.
#
# Without a terminal on stdin every question is refused: pass --yes, and --sha256.
# Exit status: 0 done, 1 refused or failed, 2 usage error.
#
# For the test suite only: QVM_REMOTE_INSTALL_ROOT=DIR installs below DIR instead of /
# (like DESTDIR), and only together with it QVM_REMOTE_INSTALL_TEST_HOSTNAME stands in
# for this machine's host name.
set -euo pipefail
umask 077

readonly prog=install-dom0.sh
readonly UNITS=(qvm-remote-dom0.service qvm-remote-panel.service)
# The bundle's members, in byte order, as packaging/mkbundle.sh writes them.
readonly MEMBERS=(30-qvm-remote.preset qvm-remote-dom0 qvm-remote-dom0.service
    qvm-remote-panel.service qvm-remote-provision remote-policy remote.conf)
readonly MAX_BUNDLE=$((64 * 1024 * 1024))
readonly DEFAULT_FROM=qvm-remote/target/qvm-remote-dom0.tar

usage() {
    cat >&2 <<'EOF'
usage: install-dom0.sh VM [--sha256 HASH] [--from PATH] [--user USER] [--yes] [--enable]
       install-dom0.sh VM --upgrade [--sha256 HASH] [--from PATH] [--user USER] [--yes]
       install-dom0.sh [VM] --uninstall [--purge] [--yes]

  VM            the VM that built the bundle (`make print-hash`) and becomes a client
  --sha256 HASH the SHA-256 that `make print-hash` printed in VM (else you type it)
  --from PATH   the bundle's path in VM, relative to the user's home
                (default qvm-remote/target/qvm-remote-dom0.tar)
  --user USER   the VM user that runs qvm-remote (default user)
  --yes         ask nothing (needs --sha256 to install or upgrade)
  --enable      also start the daemon at every boot (asks, stating the risk)
  --upgrade     replace binary and units, keep config, policy and keys, restart
  --uninstall   stop, disable and remove; keep config, policy and keys
  --purge       with --uninstall: remove config, policy, keys and state too
EOF
    exit 2
}

say() { printf '%s: %s\n' "$prog" "$*"; }
die() {
    printf '%s: %s\n' "$prog" "$*" >&2
    exit 1
}

vm='' sha256='' from=$DEFAULT_FROM vm_user=user
yes=0 enable=0 mode=install purge=0
while (($#)); do
    case $1 in
    --sha256 | --from | --user)
        (($# >= 2)) || usage
        case $1 in
        --sha256) sha256=$2 ;;
        --from) from=$2 ;;
        --user) vm_user=$2 ;;
        esac
        shift 2
        ;;
    --yes) yes=1 && shift ;;
    --enable) enable=1 && shift ;;
    --upgrade | --uninstall)
        [[ $mode == install ]] || usage
        mode=${1#--}
        shift
        ;;
    --purge) purge=1 && shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *)
        [[ -z $vm ]] || usage
        vm=$1
        shift
        ;;
    esac
done

# Arguments.
((purge == 0)) || [[ $mode == uninstall ]] || usage
((enable == 0)) || [[ $mode == install ]] || usage
[[ -n $vm || $mode == uninstall ]] || usage
if [[ -n $vm ]]; then
    [[ $vm =~ ^[A-Za-z][A-Za-z0-9_.-]{0,30}$ && $vm != none && $vm != default && $vm != dom0 ]] ||
        die "invalid VM name"
fi
[[ $vm_user =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "invalid user name"
# The path goes into a command string for the VM's shell: a plain alphabet only.
[[ $from =~ ^[A-Za-z0-9._/+-]+$ && $from != *..* ]] ||
    die "--from: want a plain path (letters, digits, . _ / + -, no ..)"
if [[ -n $sha256 ]]; then
    sha256=${sha256,,}
    [[ $sha256 =~ ^[0-9a-f]{64}$ ]] || die "--sha256: want 64 hex characters"
fi

# Where things go. Below QVM_REMOTE_INSTALL_ROOT for the test suite, else the system.
root=${QVM_REMOTE_INSTALL_ROOT:-}
host=$(uname -n)
if [[ -n $root ]]; then
    [[ $root == /* && $root != / && -d $root ]] ||
        die "QVM_REMOTE_INSTALL_ROOT must be an existing absolute directory other than /"
    host=${QVM_REMOTE_INSTALL_TEST_HOSTNAME:-$host}
fi
readonly bindir=$root/usr/bin
readonly libdir=$root/usr/lib/qvm-remote
readonly unitdir=$root/usr/lib/systemd/system
readonly presetdir=$root/usr/lib/systemd/system-preset
readonly confdir=$root/etc/qubes
readonly conf=$confdir/remote.conf
readonly policy=$confdir/remote-policy
readonly keysdir=$confdir/remote.d
readonly statedir=$root/var/lib/qvm-remote
readonly auditlog=$root/var/log/qubes/qvm-remote.log
readonly dom0_bin=$bindir/qvm-remote-dom0

# Refuse anywhere but dom0: this script gives VMs a way into the machine it runs on.
[[ $host == dom0 ]] ||
    die "this is '$host', not dom0; run install-dom0.sh in dom0 (in a VM: make install-vm)"
if [[ -z $root ]]; then
    [[ $(id -u) == 0 ]] || die "run as root (sudo $prog ...)"
    # The binaries below must act on the system's files, not on a caller's overrides.
    while IFS= read -r name; do
        unset "$name"
    done < <(compgen -e | grep '^QVM_REMOTE_' || true)
else
    export QVM_REMOTE_CONF=$conf QVM_REMOTE_KEYS_DIR=$keysdir QVM_REMOTE_POLICY=$policy \
        QVM_REMOTE_STATE_DIR=$statedir QVM_REMOTE_RUN_DIR=$root/run/qvm-remote \
        QVM_REMOTE_LOG=$auditlog
fi
export PATH="$bindir:$PATH"

if [[ ! -t 0 ]] && ((!yes)); then
    die "stdin is not a terminal, so nothing can be asked: pass --yes (and --sha256 HASH)"
fi
if ((yes)) && [[ $mode != uninstall && -z $sha256 ]]; then
    die "--yes needs --sha256 HASH: the bundle is installed only if its hash is known"
fi
for tool in qvm-run sha256sum tar od systemctl; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# confirm QUESTION: yes with --yes, else a typed y.
confirm() {
    ((yes)) && return 0
    local answer=''
    read -r -p "$1 [y/N] " answer || true
    [[ $answer == [yY] || $answer == [yY][eE][sS] ]]
}

# put MODE SRC DEST: a complete new file renamed over DEST, so nothing ever sees half a
# file and a running program keeps its old inode.
put() {
    local tmp
    tmp="$3.new.$$"
    install -m "$1" -- "$2" "$tmp"
    mv -f -- "$tmp" "$3"
}

# ensure_dir MODE DIR: creates DIR with MODE (missing parents 0755) unless it exists;
# an existing directory keeps its mode.
ensure_dir() {
    [[ -d $2 ]] && return 0
    (umask 022 && mkdir -p -- "$(dirname -- "$2")")
    mkdir -m "$1" -- "$2"
}

tmp=''
cleanup() {
    [[ -z $tmp ]] || rm -rf -- "$tmp"
}
trap cleanup EXIT

# Pulls the bundle from the VM, checks its hash and members and unpacks it into
# $tmp/x. Nothing from the VM is unpacked, run or installed before the hash matched.
fetch_and_verify() {
    tmp=$(mktemp -d)
    local cmd got status=0 expected=$sha256 typed listing
    if [[ $from == /* ]]; then
        cmd="cat -- '$from'"
    else
        cmd="cat -- \"\$HOME\"/'$from'"
    fi
    say "reading $from from $vm"
    qvm-run --pass-io --no-gui --no-autostart --no-filter-escape-chars \
        --user "$vm_user" "$vm" "$cmd" </dev/null 2>"$tmp/qvm-run.err" |
        head -c $((MAX_BUNDLE + 1)) >"$tmp/bundle.tar" || status=$?
    if (($(stat -c %s "$tmp/bundle.tar") > MAX_BUNDLE)); then
        die "the bundle from $vm is larger than $MAX_BUNDLE bytes: refused"
    fi
    ((status == 0)) ||
        die "could not read $from in $vm (is $vm running? did you run make print-hash there?)"
    got=$(sha256sum <"$tmp/bundle.tar")
    got=${got%% *}

    if [[ -z $expected ]]; then
        printf '%s\n' "In $vm, \`make print-hash\` printed the SHA-256 of the bundle." \
            "Type that hash here (what dom0 received is checked against it):"
        read -r typed || true
        typed=${typed,,}
        expected=${typed%% *}
        [[ $expected =~ ^[0-9a-f]{64}$ ]] || die "not a SHA-256 (64 hex characters): nothing installed"
    fi
    if [[ $got != "$expected" ]]; then
        die "SHA-256 mismatch: dom0 received $got, expected $expected; nothing installed"
    fi
    say "SHA-256 $got matches"

    # Exactly the expected members, each a regular file.
    listing=$(tar -tf "$tmp/bundle.tar") || die "the bundle is not a tar file"
    [[ $listing == "$(printf '%s\n' "${MEMBERS[@]}")" ]] ||
        die "the bundle does not hold the expected files; nothing installed"
    listing=$(tar -tvf "$tmp/bundle.tar")
    if grep -qv '^-' <<<"$listing"; then
        die "the bundle holds something other than regular files; nothing installed"
    fi
    mkdir "$tmp/x"
    tar -xf "$tmp/bundle.tar" -C "$tmp/x" --no-same-owner --no-same-permissions -- "${MEMBERS[@]}"
    version=$("$tmp/x/qvm-remote-dom0" --version) || die "the bundled qvm-remote-dom0 does not run here"
}

# Binary, provisioning script, units and preset: what install and upgrade replace.
install_program_files() {
    ensure_dir 0755 "$bindir"
    ensure_dir 0755 "$libdir"
    ensure_dir 0755 "$unitdir"
    ensure_dir 0755 "$presetdir"
    put 0755 "$tmp/x/qvm-remote-dom0" "$dom0_bin"
    put 0755 "$tmp/x/qvm-remote-provision" "$libdir/qvm-remote-provision"
    local unit
    for unit in "${UNITS[@]}"; do
        put 0644 "$tmp/x/$unit" "$unitdir/$unit"
    done
    put 0644 "$tmp/x/30-qvm-remote.preset" "$presetdir/30-qvm-remote.preset"
    systemctl daemon-reload
}

do_install() {
    if [[ -e $dom0_bin ]]; then
        die "qvm-remote is already installed ($dom0_bin). To replace it: --upgrade. To add a VM: add it to QVM_REMOTE_VMS in $conf and run $libdir/qvm-remote-provision VM"
    fi
    fetch_and_verify
    confirm "Install $version into dom0, with $vm as a client?" || die "not installed"

    install_program_files
    ensure_dir 0755 "$confdir"
    if [[ -e $conf || -L $conf ]]; then
        say "keeping the existing $conf"
    else
        sed "s/^QVM_REMOTE_VMS=\$/QVM_REMOTE_VMS=$vm/" "$tmp/x/remote.conf" >"$tmp/remote.conf"
        put 0644 "$tmp/remote.conf" "$conf"
        say "wrote $conf (QVM_REMOTE_VMS=$vm)"
    fi
    if [[ -e $policy || -L $policy ]]; then
        say "keeping the existing $policy"
    else
        put 0644 "$tmp/x/remote-policy" "$policy"
        say "wrote $policy (every authorised VM: level full; narrow it there)"
    fi
    ensure_dir 0700 "$keysdir"

    "$libdir/qvm-remote-provision" --user "$vm_user" "$vm" </dev/null ||
        die "$vm has no key, so the daemon will not serve it; fix the cause and run $libdir/qvm-remote-provision $vm"
    local keys
    keys=$(qvm-remote-dom0 keys)
    if ! awk -v vm="$vm" '$1 == vm && /\(served\)$/ { found = 1 } END { exit !found }' <<<"$keys"; then
        say "note: $vm is not in QVM_REMOTE_VMS of $conf; add it there so the daemon serves it"
    fi

    if ((enable)); then
        qvm-remote-dom0 enable || die "installed, but not enabled; start it for this boot: systemctl start ${UNITS[0]}"
        say "installed $version; ${UNITS[0]} runs now and at every boot"
    else
        systemctl restart "${UNITS[0]}"
        say "installed $version; ${UNITS[0]} runs until the next boot (not enabled)"
        say "to start it at every boot: qvm-remote-dom0 enable"
    fi
    say "in $vm, try: qvm-remote qvm-ls --running"
}

do_upgrade() {
    [[ -e $dom0_bin ]] || die "qvm-remote is not installed ($dom0_bin missing): install it first"
    fetch_and_verify
    confirm "Replace $("$dom0_bin" --version 2>/dev/null || echo 'the installed version') with $version?" ||
        die "not upgraded"
    install_program_files
    # try-restart: restarts what was running, starts nothing that was stopped.
    systemctl try-restart "${UNITS[@]}"
    say "upgraded to $version; config, policy and keys kept; running services restarted"
}

do_uninstall() {
    local what='binaries and units (config, policy and keys stay)'
    ((purge)) && what='binaries, units, config, policy, keys and state'
    confirm "Stop qvm-remote and remove its $what?" || die "nothing removed"
    systemctl disable --now "${UNITS[@]}" || say "note: systemctl disable failed (already gone?)"
    rm -f -- "$dom0_bin" "$libdir/qvm-remote-provision" "$presetdir/30-qvm-remote.preset"
    local unit
    for unit in "${UNITS[@]}"; do
        rm -f -- "$unitdir/$unit"
    done
    [[ ! -d $libdir ]] || rmdir -- "$libdir" 2>/dev/null || true
    systemctl daemon-reload
    if ((purge)); then
        if [[ -f $conf ]] && grep -Eq '^[[:space:]]*QVM_REMOTE_(KEYS_DIR|POLICY|STATE_DIR)=' "$conf"; then
            say "note: $conf moved keys, policy or state elsewhere; remove those yourself"
        fi
        rm -rf -- "$conf" "$policy" "$keysdir" "$statedir"
        say "removed; config, policy, keys and state purged; the audit log $auditlog stays"
    else
        say "removed; kept $conf, $policy, $keysdir and $statedir (--purge removes them)"
    fi
    if [[ -n $vm ]]; then
        say "the client stays in $vm (make uninstall-vm there; its key is ~/.qvm-remote/auth.key)"
    fi
}

version=''
case $mode in
install) do_install ;;
upgrade) do_upgrade ;;
uninstall) do_uninstall ;;
esac
