# shellcheck shell=bash
# Property tables and the qvm-prefs / qubes-prefs implementation of the Qubes
# OS simulator. Sourced after simlib.sh by simctl, qvm-prefs and qubes-prefs
# (kept out of simlib.sh so that qvm-run parses less code per spawn).
# Variables set here are used by the tools that source this file:
# shellcheck disable=SC2034

# The per-VM preferences seeded by `simctl add-vm`, and restored by
# `qvm-prefs --default`. label and klass are virtual (files label, class).
SIM_VM_PREF_DEFAULTS=(
    netvm=sys-firewall
    template=fedora-40
    memory=400
    maxmem=4000
    vcpus=2
    kernel=6.6.48-1.fc37
    virt_mode=pvh
    autostart=False
    include_in_backups=True
)
# Further property names qvm-prefs accepts (no default: unset until set).
SIM_VM_PREF_EXTRA=(
    audiovm debug default_dispvm default_user dns guivm icon ip ip6
    kernelopts keyboard_layout mac management_dispvm provides_network
    qrexec_timeout shutdown_timeout stubdom_mem template_for_dispvms
    updateable uuid visible_gateway visible_ip visible_netmask
)
SIM_GLOBAL_PREF_DEFAULTS=(
    default_template=fedora-40
    default_netvm=sys-firewall
    clockvm=sys-net
    updatevm=sys-net
)
SIM_GLOBAL_PREF_EXTRA=(
    check_updates_vm default_audiovm default_dispvm default_guivm
    default_kernel default_pool default_qrexec_timeout
    default_shutdown_timeout management_dispvm stats_interval
)
# sim_prefs_main vm|global ARGS... -- the whole of qvm-prefs / qubes-prefs
# (mirrors qubesadmin/tools/qvm_prefs.py process_actions): list, get, set,
# --default. Unknown VM or property: argparse-style error, exit 2.
sim_prefs_main() {
    local kind=$1
    shift
    local delete=0 endopts=0 a vm='' prop='' value='' have_value=0 dir
    local -a pos=() defaults extra
    while (($#)); do
        a=$1
        shift
        if ((endopts)); then
            pos+=("$a")
            continue
        fi
        case $a in
        --) endopts=1 ;;
        --default | -D) delete=1 ;;
        --get | -g | --set | -s | --hide-default | --verbose | -v | --quiet | -q | --force-root) ;;
        --help | -h)
            printf 'usage: %s\n' "$SIM_USAGE"
            exit 0
            ;;
        -?*) sim_argerror "unrecognized arguments: $a" ;;
        *) pos+=("$a") ;;
        esac
    done
    sim_setup
    if [[ $kind == vm ]]; then
        ((${#pos[@]})) || sim_argerror "the following arguments are required: VMNAME"
        vm=${pos[0]}
        pos=("${pos[@]:1}")
        sim_require_vm "$vm"
        dir=$SIM_DIR/vms/$vm/prefs
        defaults=("${SIM_VM_PREF_DEFAULTS[@]}")
        extra=(klass label name "${SIM_VM_PREF_EXTRA[@]}")
    else
        dir=$SIM_DIR/global-prefs
        defaults=("${SIM_GLOBAL_PREF_DEFAULTS[@]}")
        extra=("${SIM_GLOBAL_PREF_EXTRA[@]}")
    fi
    ((${#pos[@]} <= 2)) || sim_argerror "unrecognized arguments: ${pos[*]:2}"
    ((${#pos[@]} < 1)) || prop=${pos[0]//-/_}
    if ((${#pos[@]} == 2)); then
        value=${pos[1]}
        have_value=1
    fi

    # dom0 is not simulated beyond its name.
    if [[ $vm == dom0 ]]; then
        if [[ -z $prop ]]; then
            printf 'klass  -  AdminVM\nlabel  -  black\nname   -  dom0\n'
            return 0
        fi
        case $prop in
        klass) [[ $have_value == 1 || $delete == 1 ]] || { printf 'AdminVM\n'; return 0; } ;;
        label) [[ $have_value == 1 || $delete == 1 ]] || { printf 'black\n'; return 0; } ;;
        name) [[ $have_value == 1 || $delete == 1 ]] || { printf 'dom0\n'; return 0; } ;;
        esac
        sim_argerror "dom0 property '$prop' is not supported by the simulator"
    fi

    # Listing.
    local kv p w=0 v f
    local -a names=()
    local known=' '
    for kv in "${defaults[@]}"; do known+="${kv%%=*} "; done
    for p in "${extra[@]}"; do known+="$p "; done
    if [[ -z $prop ]]; then
        ((!delete)) || sim_argerror "--default requires a PROPERTY"
        [[ $kind != vm ]] || names=(klass label name)
        for f in "$dir"/*; do
            [[ -f $f ]] || continue
            p=${f##*/}
            [[ $p =~ ^[a-z_][a-z0-9_]*$ ]] && names+=("$p")
        done
        # sort (C locale) with a simple insertion sort: no subprocess.
        local -a sorted=()
        local i
        for p in "${names[@]}"; do
            sorted+=("$p")
            i=$((${#sorted[@]} - 1))
            while ((i > 0)) && [[ ${sorted[i - 1]} > $p ]]; do
                sorted[i]=${sorted[i - 1]}
                i=$((i - 1))
            done
            sorted[i]=$p
        done
        for p in "${sorted[@]}"; do ((${#p} <= w)) || w=${#p}; done
        for p in "${sorted[@]}"; do
            sim_prefs_get "$p"
            printf '%-*s  -  %s\n' "$w" "$p" "$v"
        done
        return 0
    fi

    [[ $prop =~ ^[a-z_][a-z0-9_]*$ && $known == *" $prop "* ]] ||
        sim_argerror "no such property: '$prop'"

    if ((delete)); then
        ((!have_value)) || sim_argerror "cannot both set and reset a property"
        case $prop in
        name | klass | label) sim_die 1 "error: property '$prop' has no default value" ;;
        esac
        for kv in "${defaults[@]}"; do
            if [[ ${kv%%=*} == "$prop" ]]; then
                sim_write "$dir/$prop" "${kv#*=}"
                return 0
            fi
        done
        rm -f -- "${dir:?}/$prop"
        return 0
    fi

    if ((have_value)); then
        case $prop in
        name | klass) sim_die 1 "error: property '$prop' is read-only in the simulator" ;;
        label)
            [[ $SIM_LABELS == *" $value "* ]] || sim_die 1 "error: no such label: '$value'"
            sim_write "$SIM_DIR/vms/$vm/label" "$value"
            return 0
            ;;
        default_dispvm | netvm | template | guivm | audiovm)
            [[ ${value,,} != none ]] || value=''
            ;;
        esac
        [[ $value != *$'\n'* ]] || sim_die 1 "error: property values must be one line"
        sim_write "$dir/$prop" "$value"
        return 0
    fi

    sim_prefs_get "$prop"
    # A None value prints nothing (like the real tool's `if value is not None`).
    [[ -z $v ]] || printf '%s\n' "$v"
    return 0
}

# helper of sim_prefs_main: sets v (caller's local) to the value of $1.
sim_prefs_get() {
    case $1 in
    name) v=$vm ;;
    klass) sim_read v "$SIM_DIR/vms/$vm/class" AppVM ;;
    label) sim_read v "$SIM_DIR/vms/$vm/label" red ;;
    *)
        v=''
        if [[ -f $dir/$1 ]]; then IFS= read -r v <"$dir/$1" || true; fi
        ;;
    esac
}
