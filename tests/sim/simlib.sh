# shellcheck shell=bash
# Variables set here are used by the tools that source this file:
# shellcheck disable=SC2034
# Shared code of the Qubes OS simulator (tests/sim/). Sourced by every tool;
# not executable on its own. Keep it free of subprocesses on the qvm-run path:
# everything here that qvm-run calls uses bash builtins only.

# Byte-wise, locale-independent behaviour for regexes, globs and sorting.
LC_ALL=C
SIM_PROG=${0##*/}
SIM_USAGE=${SIM_USAGE:-"$SIM_PROG [options]"}

# The only VM-name syntax the simulator accepts (same as Qubes, see QUBES-FACTS.md).
SIM_NAME_RE='^[A-Za-z][A-Za-z0-9_.-]{0,30}$'

# sim_die CODE MESSAGE... -- "prog: message" on stderr, exit CODE.
sim_die() {
    local code=$1
    shift
    printf '%s: %s\n' "$SIM_PROG" "$*" >&2
    exit "$code"
}

# sim_argerror MESSAGE... -- argparse-style usage error, exit 2.
sim_argerror() {
    printf 'usage: %s\n%s: error: %s\n' "$SIM_USAGE" "$SIM_PROG" "$*" >&2
    exit 2
}

# sim_env_check -- QVM_SIM_DIR must be set and absolute. Sets SIM_DIR.
sim_env_check() {
    if [[ -z ${QVM_SIM_DIR:-} ]]; then
        sim_die 2 "QVM_SIM_DIR is not set; this is the Qubes simulator (tests/sim), it needs a simulator directory (see tests/sim/README.md)"
    fi
    if [[ $QVM_SIM_DIR != /* ]]; then
        sim_die 2 "QVM_SIM_DIR must be an absolute path, got: $QVM_SIM_DIR"
    fi
    SIM_DIR=$QVM_SIM_DIR
    while [[ $SIM_DIR == */ && $SIM_DIR != / ]]; do SIM_DIR=${SIM_DIR%/}; done
    if [[ $SIM_DIR == / ]]; then
        sim_die 2 "QVM_SIM_DIR must not be /"
    fi
}

# sim_setup -- sim_env_check plus: the directory must have been initialised.
sim_setup() {
    sim_env_check
    if [[ ! -d $SIM_DIR/vms ]]; then
        sim_die 2 "QVM_SIM_DIR=$SIM_DIR is not an initialised simulator directory (run: simctl init)"
    fi
}

# sim_valid_name NAME -- true if NAME is a syntactically valid qube name
# (dom0 included).
sim_valid_name() {
    [[ $1 =~ $SIM_NAME_RE && $1 != none && $1 != default ]]
}

# sim_vm_exists NAME -- true for dom0 and for every VM directory.
# Validates the name before it is used in a path.
sim_vm_exists() {
    sim_valid_name "$1" || return 1
    [[ $1 == dom0 || -d $SIM_DIR/vms/$1 ]]
}

# sim_require_vm NAME -- argparse-style "no such domain" unless it exists.
sim_require_vm() {
    sim_vm_exists "$1" || sim_argerror "no such domain: '$1'"
}

# sim_read VAR FILE DEFAULT -- first line of FILE into VAR (builtin read).
sim_read() {
    local -n _sim_out=$1
    _sim_out=$3
    if [[ -f $2 ]]; then
        IFS= read -r _sim_out <"$2" || true
        [[ -n $_sim_out ]] || _sim_out=$3
    fi
}

# sim_state NAME -- sets SIM_STATE (dom0 is always Running).
sim_state() {
    if [[ $1 == dom0 ]]; then
        SIM_STATE=Running
    else
        sim_read SIM_STATE "$SIM_DIR/vms/$1/state" Halted
    fi
}

# sim_write FILE VALUE -- replace FILE atomically (tmp file + rename).
sim_write() {
    local tmp
    tmp=$1.tmp.$$
    printf '%s\n' "$2" >"$tmp"
    mv -f -- "$tmp" "$1"
}

# sim_set_state NAME STATE
sim_set_state() {
    sim_write "$SIM_DIR/vms/$1/state" "$2"
}

# sim_all_vms -- SIM_VMS=(dom0 vm1 vm2 ...) sorted (C locale glob order).
sim_all_vms() {
    local d n
    SIM_VMS=(dom0)
    for d in "$SIM_DIR"/vms/*/; do
        [[ -d $d ]] || continue
        d=${d%/}
        n=${d##*/}
        sim_valid_name "$n" && [[ $n != dom0 ]] && SIM_VMS+=("$n")
    done
    return 0
}

# sim_expand_names NAME... -- SIM_NAMES = the named VMs, with fnmatch-style
# wildcards (*?[) expanded like qubesadmin's VmNameAction; SIM_MISSING = the
# plain names that do not exist. Each name once, in order of first mention.
sim_expand_names() {
    local pat vm seen=' '
    SIM_NAMES=()
    SIM_MISSING=()
    sim_all_vms
    for pat in "$@"; do
        if [[ $pat == *[*?[]* ]]; then
            for vm in "${SIM_VMS[@]}"; do
                # shellcheck disable=SC2053 # pattern match is intended
                if [[ $vm == $pat && $seen != *" $vm "* ]]; then
                    SIM_NAMES+=("$vm")
                    seen+="$vm "
                fi
            done
        elif sim_vm_exists "$pat"; then
            if [[ $seen != *" $pat "* ]]; then
                SIM_NAMES+=("$pat")
                seen+="$pat "
            fi
        else
            SIM_MISSING+=("$pat")
        fi
    done
    return 0
}

# sim_vm_signal NAME SIGNAL -- send SIGNAL to every process "inside" VM NAME:
# those whose environment holds QVM_SIM_DIR=<this sim dir> and
# QVM_SIM_VM=NAME (qvm-run/simctl exec set exactly these). As non-root only
# our own processes are visible, which are the only ones we could start.
# SIGNAL 0 only probes. Sets SIM_SIGNALLED to the number of processes hit.
sim_vm_signal() {
    local vm=$1 sig=$2 f pid kv hit_dir hit_vm
    SIM_SIGNALLED=0
    for f in /proc/[0-9]*/environ; do
        pid=${f#/proc/}
        pid=${pid%/environ}
        [[ $pid != "$$" ]] || continue
        hit_dir=0
        hit_vm=0
        {
            while IFS= read -r -d '' kv; do
                if [[ $kv == "QVM_SIM_DIR=$SIM_DIR" ]]; then
                    hit_dir=1
                elif [[ $kv == "QVM_SIM_VM=$vm" ]]; then
                    hit_vm=1
                fi
            done <"$f"
        } 2>/dev/null || true
        if ((hit_dir && hit_vm)); then
            if kill -s "$sig" "$pid" 2>/dev/null; then
                SIM_SIGNALLED=$((SIM_SIGNALLED + 1))
            fi
        fi
    done
    return 0
}

# sim_exec_in_vm VM USER PASSIO NOSHELL COMMAND [ARG...]
# Replaces the current process with COMMAND running "inside" VM, exactly as
# qvm-run does it. Never returns. See README.md for the environment.
sim_exec_in_vm() {
    local vm=$1 user=$2 passio=$3 noshell=$4
    shift 4
    local vmdir=$SIM_DIR/vms/$vm
    local home=$vmdir/home uid='' prog joined fd n
    local -a argv pre=() envv

    if [[ $EUID -eq 0 && -f $vmdir/uid && $user != root ]]; then
        sim_read uid "$vmdir/uid" ''
        [[ $uid =~ ^[0-9]+$ ]] || sim_die 2 "simulator: bad uid file for VM '$vm'"
    fi

    # Hostile-VM hook: vms/<vm>/agent replaces `qvm-remote agent [--once]`.
    joined="$*"
    if [[ -e $vmdir/agent ]] &&
        [[ $joined == 'qvm-remote agent' || $joined == 'qvm-remote agent --once' ]]; then
        if [[ -x $vmdir/agent && ! -d $vmdir/agent ]]; then
            prog=$vmdir/agent
        else
            sim_read prog "$vmdir/agent" ''
            [[ -n $prog ]] || sim_die 2 "simulator: $vmdir/agent is empty"
        fi
        argv=("$prog")
        [[ $joined == *' --once' ]] && argv+=(--once)
    elif ((noshell)); then
        argv=("$@")
        if [[ $1 == *=* ]]; then
            # env(1) would take it for an assignment: exec it via bash instead.
            # shellcheck disable=SC2016 # expanded by that bash
            argv=(/bin/bash -c 'exec -- "$0" "$@"' "$@")
        fi
    else
        # qubes.VMShell is `exec /bin/bash` reading "COMMAND; exit" on stdin.
        argv=(/bin/bash -c "$1")
    fi

    envv=(
        "HOME=$home"
        "USER=$user"
        "PATH=$SIM_DIR/bin:/usr/local/bin:/usr/bin:/bin"
        "QVM_SIM_VM=$vm"
        "QVM_SIM_DIR=$SIM_DIR"
        "LANG=C.UTF-8"
    )
    if [[ -n $uid ]]; then
        pre=(setpriv "--reuid=$uid" "--regid=$uid" --clear-groups --)
    fi

    cd -- "$home" 2>/dev/null || sim_die 2 "simulator: cannot enter the home of VM '$vm': $home"

    # Do not hand the caller's other descriptors to the VM (the real qvm-run
    # never passes them to the remote side). 255 is bash's own script fd.
    for fd in "/proc/$$/fd/"*; do
        n=${fd##*/}
        if [[ $n =~ ^[0-9]+$ ]] && ((n > 2 && n != 255)); then
            { exec {n}>&-; } 2>/dev/null || true
        fi
    done

    if ((passio)); then
        exec "${pre[@]}" env -i -- "${envv[@]}" "${argv[@]}"
    else
        exec "${pre[@]}" env -i -- "${envv[@]}" "${argv[@]}" </dev/null >/dev/null 2>&1
    fi
}

SIM_TAG_RE='^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$'
SIM_FEATURE_RE='^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,63}$'
SIM_LABELS=' red orange yellow green gray blue purple black '
SIM_CLASSES=' AppVM TemplateVM StandaloneVM DispVM '

