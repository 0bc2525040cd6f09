#!/usr/bin/env bash
# demo.sh -- `make demo`: a simulated dom0 with two VMs (work, dev), keys generated in
# the VMs and authorised in dom0, the daemon running, and a few commands run from a VM.
# It leaves everything running and says how to try more and how to stop.
#
# usage: demo.sh start BIN_DIR DEMO_DIR | demo.sh stop DEMO_DIR
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

stop() {
    local demo=$1
    if [[ -f $demo/dom0/daemon.pid ]]; then
        local pid
        pid=$(<"$demo/dom0/daemon.pid")
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            echo "demo daemon (pid $pid) stopped"
        fi
        rm -f -- "$demo/dom0/daemon.pid"
    fi
}

start() {
    local bin=$1 demo=$2
    [[ -x $bin/qvm-remote && -x $bin/qvm-remote-dom0 ]] || {
        echo "demo.sh: build first (make build): no binaries in $bin" >&2
        exit 1
    }
    stop "$demo"
    rm -rf -- "$demo"
    mkdir -p -- "$demo"
    chmod 0711 -- "$demo"
    export QVM_SIM_DIR=$demo/qubes
    local dom0=$demo/dom0
    mkdir -p -- "$dom0"
    chmod 0700 -- "$dom0"
    "$here/simctl" init
    cp -- "$bin/qvm-remote" "$QVM_SIM_DIR/bin/qvm-remote"

    umask 077
    cat >"$dom0/remote.conf" <<EOF
QVM_REMOTE_VMS="work dev"
QVM_REMOTE_QVM_RUN=$here/qvm-run
QVM_REMOTE_KEYS_DIR=$dom0/keys
QVM_REMOTE_POLICY=$dom0/remote-policy
QVM_REMOTE_STATE_DIR=$dom0/state
QVM_REMOTE_RUN_DIR=$dom0/run
QVM_REMOTE_LOG=$dom0/qvm-remote.log
EOF
    local dom0cmd=("$bin/qvm-remote-dom0" --config "$dom0/remote.conf")

    for vm in work dev; do
        "$here/simctl" add-vm "$vm" >/dev/null
        echo "== $vm: qvm-remote key gen"
        "$here/simctl" exec "$vm" qvm-remote key gen
        echo "== dom0: qvm-remote-dom0 authorize $vm   (key passed on stdin, never in argv)"
        "$here/simctl" exec "$vm" cat .qvm-remote/auth.key | "${dom0cmd[@]}" authorize "$vm"
    done

    echo "== dom0: starting the daemon"
    "${dom0cmd[@]}" </dev/null >"$dom0/daemon.out" 2>&1 &
    echo $! >"$dom0/daemon.pid"
    disown || true

    cat >"$demo/vm" <<EOF
#!/usr/bin/env bash
# Runs a command inside a simulated VM: $demo/vm work qvm-remote echo hi
QVM_SIM_DIR=$QVM_SIM_DIR exec $here/simctl exec "\$@"
EOF
    chmod 0755 "$demo/vm"

    run() {
        echo
        echo "work\$ qvm-remote $*"
        set +e
        "$demo/vm" work qvm-remote "$@"
        echo "(exit status $?)"
        set -e
    }
    run echo hello from dom0
    # shellcheck disable=SC2016 # expanded by bash in dom0, not here
    run 'id -u; pwd; echo "I am $QVM_REMOTE_ID for $QVM_REMOTE_VM"'
    run 'echo to stderr >&2; exit 3'
    run nonexistent-command
    run -t 1 sleep 10
    echo
    echo "work\$ echo 'uname -s' | qvm-remote"
    echo 'uname -s' | "$demo/vm" work qvm-remote
    echo
    echo "dev\$ qvm-remote --json printf ok"
    "$demo/vm" dev qvm-remote --json printf ok
    echo
    echo
    sleep 0.5 # the daemon refreshes its status file within a few tenths of a second
    "${dom0cmd[@]}" status || true
    cat <<EOF

The demo is still running. Try more:
  $demo/vm work qvm-remote 'ls -la /; exit 7'
  $demo/vm dev qvm-remote history
  $bin/qvm-remote-dom0 --config $dom0/remote.conf status
  less $dom0/qvm-remote.log        (the hash-chained audit log)
Stop it with:  make demo-stop
EOF
}

case ${1:-} in
start) start "$2" "$3" ;;
stop) stop "$2" ;;
*)
    echo "usage: demo.sh start BIN_DIR DEMO_DIR | demo.sh stop DEMO_DIR" >&2
    exit 2
    ;;
esac
