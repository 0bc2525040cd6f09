#!/usr/bin/env bash
# Self-test of the Qubes OS simulator in tests/sim/. Runs every tool against a
# fresh simulator directory (under $TMPDIR) as the current user; as root it
# also checks the per-VM uids and the isolation between VM homes.
# Prints "N passed, M failed" and exits non-zero on any failure.

# Commands in single quotes are meant to be expanded inside the VM:
# shellcheck disable=SC2016
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
export PATH="$here:$PATH"
unset QVM_SIM_DIR
scratch=$(mktemp -d "${TMPDIR:-/tmp}/qvm-sim-selftest.XXXXXX")
chmod 0711 "$scratch" # root mode: the VM uids must reach $QVM_SIM_DIR below it
export QVM_SIM_DIR=$scratch/sim
out=$scratch/out
err=$scratch/err
pass=0
fail=0
bgpids=()
bg_wrappers=()

cleanup() {
    local p
    for p in "${bgpids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [[ -d $QVM_SIM_DIR/vms ]]; then qvm-kill --all >/dev/null 2>&1 || true; fi
    rm -rf -- "$scratch"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); }
bad() {
    fail=$((fail + 1))
    printf 'FAIL: %s\n' "$*" >&2
    if [[ -s $err ]]; then sed 's/^/    stderr: /' "$err" | head -n 5 >&2; fi
}

# run CMD... -- run with stdin from /dev/null, capture stdout/stderr, set RC.
run() {
    RC=0
    "$@" <"${STDIN:-/dev/null}" >"$out" 2>"$err" || RC=$?
}

# t_rc NAME RC CMD... -- exit status must be RC.
t_rc() {
    local name=$1 want=$2
    shift 2
    run "$@"
    if [[ $RC == "$want" ]]; then ok; else bad "$name: exit $RC, want $want"; fi
}

# t_out NAME EXPECTED CMD... -- exit 0 and stdout exactly EXPECTED (+ newline).
t_out() {
    local name=$1 want=$2 got
    shift 2
    run "$@"
    got=$(cat "$out")
    if [[ $RC == 0 && $got == "$want" ]]; then
        ok
    else
        bad "$name: exit $RC, stdout [$got], want [$want]"
    fi
}

# t_err NAME RC PATTERN CMD... -- exit RC and stderr matches the glob PATTERN.
t_err() {
    local name=$1 want=$2 pat=$3 got
    shift 3
    run "$@"
    got=$(cat "$err")
    # shellcheck disable=SC2053 # glob match is intended
    if [[ $RC == "$want" && $got == $pat ]]; then
        ok
    else
        bad "$name: exit $RC, stderr [$got], want $want and [$pat]"
    fi
}

# t_true NAME CMD... -- the command (a test) must succeed.
t_true() {
    local name=$1
    shift
    if "$@"; then ok; else bad "$name"; fi
}

# bg_start CMD... -- run CMD in the background; sets pid (CMD's own pid).
# A wrapper subshell waits for it and records its exit status, so that this
# shell never reports "Killed"/"Terminated" job notices.
bg_n=0
bg_start() {
    bg_n=$((bg_n + 1))
    (
        "$@" </dev/null >/dev/null 2>&1 &
        printf '%s\n' "$!" >"$scratch/bg$bg_n.pid"
        wait "$!" && r=0 || r=$?
        printf '%s\n' "$r" >"$scratch/bg$bg_n.rc"
    ) 2>/dev/null &
    bg_wrappers+=("$!")
    until [[ -s $scratch/bg$bg_n.pid ]]; do sleep 0.01; done
    pid=$(<"$scratch/bg$bg_n.pid")
    bgpids+=("$pid")
}
# bg_wait -- wait for the last bg_start; sets rc to CMD's exit status.
bg_wait() {
    wait "${bg_wrappers[-1]}" || true
    rc=$(<"$scratch/bg$bg_n.rc")
}

root=0
[[ $EUID -ne 0 ]] || root=1
printf 'qvm simulator self-test (%s mode) in %s\n' "$([[ $root == 1 ]] && echo root || echo non-root)" "$scratch"

# ---------------------------------------------------------------- environment
for tool in simctl qvm-run qvm-check qvm-ls qvm-prefs qubes-prefs qvm-start qvm-shutdown \
    qvm-kill qvm-pause qvm-unpause qvm-tags qvm-features qvm-service; do
    t_err "$tool without QVM_SIM_DIR" 2 '*QVM_SIM_DIR is not set*' env -u QVM_SIM_DIR "$tool" work x
done
t_err "relative QVM_SIM_DIR" 2 '*absolute*' env QVM_SIM_DIR=rel/dir qvm-ls
t_err "uninitialised dir" 2 '*simctl init*' qvm-ls
t_err "uninitialised dir (qvm-run)" 2 '*simctl init*' qvm-run -p work true

# ---------------------------------------------------------------- simctl
t_rc "simctl init" 0 simctl init
t_rc "simctl init again" 0 simctl init
t_true "bin/ exists" test -d "$QVM_SIM_DIR/bin"
t_out "sim dir mode 0711" 711 stat -c %a "$QVM_SIM_DIR"
t_out "vms/ mode 0711" 711 stat -c %a "$QVM_SIM_DIR/vms"
t_out "bin/ mode 0755" 755 stat -c %a "$QVM_SIM_DIR/bin"
t_rc "add-vm work" 0 simctl add-vm work --tag created-by-test --tag work-tag
t_rc "add-vm other" 0 simctl add-vm other --label blue
t_rc "add-vm vault --halted" 0 simctl add-vm vault --halted --label black
t_rc "add-vm tpl --class TemplateVM" 0 simctl add-vm tpl --class TemplateVM --label gray
t_rc "add-vm duplicate" 1 simctl add-vm work
for badname in ../x x/y dom0 none default 1abc -x '' 'a b' "$(printf 'a%.0s' {1..32})" 'a$b'; do
    t_err "add-vm invalid name [$badname]" 2 '*invalid VM name*' simctl add-vm "$badname"
done
t_rc "add-vm bad label" 2 simctl add-vm lbl --label pink
t_rc "add-vm bad class" 2 simctl add-vm cls --class AdminVM
t_rc "add-vm bad option" 2 simctl add-vm opt --frobnicate
t_out "add-vm 31-char name" '' simctl add-vm "$(printf 'a%.0s' {1..31})"
t_rc "remove-vm" 0 simctl remove-vm "$(printf 'a%.0s' {1..31})"
t_rc "remove-vm missing" 1 simctl remove-vm "$(printf 'a%.0s' {1..31})"
t_out "simctl home" "$QVM_SIM_DIR/vms/work/home" simctl home work
t_true "home exists" test -d "$QVM_SIM_DIR/vms/work/home"
t_out "simctl state" Running simctl state work
t_out "simctl state halted" Halted simctl state vault
t_rc "set-state invalid" 2 simctl set-state work Crashed
t_rc "set-state missing VM" 1 simctl set-state nope Running
t_rc "simctl bogus" 2 simctl frobnicate
if ((root)); then
    t_out "uid of work" 60100 simctl uid work
    t_out "uid of other" 60101 simctl uid other
    t_out "home owner" "60100:60100 700" stat -c '%u:%g %a' "$QVM_SIM_DIR/vms/work/home"
else
    t_rc "no uid as non-root" 1 simctl uid work
    t_true "no uid file as non-root" test ! -e "$QVM_SIM_DIR/vms/work/uid"
fi

# ---------------------------------------------------------------- qvm-ls
t_out "qvm-ls --raw-list" $'dom0\nother\ntpl\nvault\nwork' qvm-ls --raw-list
t_out "qvm-ls --raw-data" $'dom0|AdminVM|Running|black\nother|AppVM|Running|blue\ntpl|TemplateVM|Running|gray\nvault|AppVM|Halted|black\nwork|AppVM|Running|red' \
    qvm-ls --raw-data --fields NAME,CLASS,STATE,LABEL
t_out "qvm-ls --fields=, lower case, prefs" $'dom0|-|-\nwork|400|-' qvm-ls --raw-data --fields=name,memory,nosuch dom0 work
t_out "qvm-ls --raw-list --halted" vault qvm-ls --raw-list --halted
t_out "qvm-ls --raw-list --running" $'dom0\nother\ntpl\nwork' qvm-ls --raw-list --running
run qvm-ls
t_true "qvm-ls table header" grep -Eq '^NAME +STATE +CLASS +LABEL' "$out"
t_true "qvm-ls table row" grep -Eq '^vault +Halted +AppVM +black +fedora-40 +sys-firewall$' "$out"
t_true "qvm-ls table dom0" grep -Eq '^dom0 +Running +AdminVM +black' "$out"
t_err "qvm-ls unknown VM" 2 "*no such domain: 'nope'*" qvm-ls nope
t_rc "qvm-ls bad option" 2 qvm-ls --frobnicate

# ---------------------------------------------------------------- qvm-check
t_err "qvm-check exists" 0 'qvm-check: work: exists' qvm-check work
t_err "qvm-check missing" 1 '*nope: non-existent!*' qvm-check nope
t_rc "qvm-check one missing" 1 qvm-check work nope
t_rc "qvm-check dom0" 0 qvm-check dom0
t_rc "qvm-check --running running" 0 qvm-check --running work other
t_rc "qvm-check --running halted" 1 qvm-check --running vault
t_rc "qvm-check --running mixed" 3 qvm-check --running work vault
t_rc "qvm-check --template" 0 qvm-check --template tpl
t_rc "qvm-check --template appvm" 1 qvm-check --template work
t_rc "qvm-check --networked" 0 qvm-check --networked work
t_rc "qvm-check --paused" 1 qvm-check --paused work
t_err "qvm-check -q silent" 1 '' qvm-check -q nope
t_rc "qvm-check wildcard" 0 qvm-check 'w*'
t_rc "qvm-check no args" 2 qvm-check
t_rc "qvm-check bad option" 2 qvm-check --frobnicate work
t_rc "qvm-check path traversal" 1 qvm-check ../vms/work

# ---------------------------------------------------------------- qvm-run
home=$QVM_SIM_DIR/vms/work/home
t_out "shell command" "$home" qvm-run --pass-io --no-autostart work 'echo $HOME'
t_out "cwd is home" "$home" qvm-run -p work pwd
t_out "shell features" 'a-b' qvm-run -p work 'x=a; y=b; echo "$x-$y" | cat'
t_out "argv without shell" 'a b|$HOME|;|' qvm-run -p work printf '%s|' 'a b' '$HOME' ';'
t_out "option-like ARGs go to the command" '-n|-p|' qvm-run -p work printf '%s|' -n -p
t_rc "--no-shell: COMMAND is a program name" 127 qvm-run -p --no-shell work 'echo hi'
t_out "--no-shell argv" 'hi' qvm-run -p --no-shell work echo hi
t_out "-- ends options" 'x' qvm-run -p -- work echo x
t_out "options after VMNAME" 'y' qvm-run work -p echo y
t_out "short cluster -pn" 'z' qvm-run -pn work echo z
t_out "env USER" user qvm-run -p work 'echo $USER'
t_out "env QVM_SIM_VM" work qvm-run -p work 'echo $QVM_SIM_VM'
t_out "env QVM_SIM_DIR" "$QVM_SIM_DIR" qvm-run -p work 'echo $QVM_SIM_DIR'
t_out "env LANG" C.UTF-8 qvm-run -p work 'echo $LANG'
t_out "env PATH" "$QVM_SIM_DIR/bin:/usr/local/bin:/usr/bin:/bin" qvm-run -p work 'echo $PATH'
t_out "env cleared" 'unset' env SIM_SELFTEST_LEAK=1 qvm-run -p work 'echo ${SIM_SELFTEST_LEAK:-unset}'
t_out "--user sets USER" someone qvm-run -p -u someone work 'echo $USER'
t_out "--user=X sets USER" other2 qvm-run -p --user=other2 work 'echo $USER'
t_out "shell is bash" yes qvm-run -p work '[[ -n $BASH_VERSION ]] && echo yes'
t_rc "exit status" 7 qvm-run -p work 'exit 7'
t_rc "exit status argv" 1 qvm-run -p work false
# (inside bash -c so that bash's own "Terminated" notice lands in $err)
t_rc "exit status by signal" 143 bash -c 'qvm-run -p work "kill -TERM \$\$"; exit $?'
t_out "stderr passes" '' qvm-run -p work 'echo oops >&2'
t_true "stderr content" grep -qx oops "$err"
printf 'line1\nline2\n' >"$scratch/two"
STDIN=$scratch/two t_out "stdin passes" $'line2\nline1' qvm-run -p work tac
printf 'x' >"$scratch/one"
STDIN=$scratch/one t_rc "no --pass-io: exit status" 5 qvm-run work 'n=$(wc -c); echo $n > got; exit 5'
t_out "no --pass-io: stdin was empty" 0 simctl exec work cat got
t_out "no --pass-io: output discarded" '' qvm-run work 'echo hidden; echo hidden >&2'
t_err "no --pass-io: Running message" 0 "Running 'true' on work" qvm-run work true
t_err "--pass-io: quiet" 0 '' qvm-run -p work true
printf '#!/bin/sh\necho hello from $QVM_SIM_VM\n' >"$QVM_SIM_DIR/bin/sim-hello"
chmod 0755 "$QVM_SIM_DIR/bin/sim-hello"
t_out "bin/ is on the VM PATH" 'hello from work' qvm-run -p work sim-hello
printf '#!/bin/sh\necho "eq $*"\n' >"$QVM_SIM_DIR/bin/sim=eq"
chmod 0755 "$QVM_SIM_DIR/bin/sim=eq"
t_out "argv[0] containing =" 'eq arg' qvm-run -p work 'sim=eq' arg
head -c 1048576 /dev/urandom >"$scratch/blob"
qvm-run --pass-io --no-autostart work 'cat' <"$scratch/blob" >"$scratch/blob.out" 2>"$err" && rc=0 || rc=$?
t_true "1 MiB binary round trip (exit $rc)" cmp -s "$scratch/blob" "$scratch/blob.out"
printf 'a\033[31mb\000c\r\n' >"$scratch/esc"
STDIN=$scratch/esc run qvm-run -p --no-filter-escape-chars work cat
t_true "escape chars and NUL untouched" cmp -s "$scratch/esc" "$out"
(
    exec 7>"$scratch/fd7"
    qvm-run -p work 'test ! -e /proc/$$/fd/7'
) && rc=0 || rc=$?
t_true "caller's extra fds are not inherited (exit $rc)" test "$rc" = 0

# The VM process replaces qvm-run (same pid), so the daemon's signals reach it.
bg_start qvm-run -p --no-autostart work 'sleep 30'
for _ in $(seq 50); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]] && break
    sleep 0.05
done
t_out "qvm-run pid becomes the VM process" sleep cat "/proc/$pid/comm"
kill -TERM "$pid"
bg_wait
t_true "SIGTERM to qvm-run reaches the VM process (exit $rc)" test "$rc" = 143

# autostart / no-autostart
t_err "--no-autostart halted, --pass-io" 1 '' qvm-run -p --no-autostart vault true
t_err "--no-autostart halted, no --pass-io" 1 "Qube 'vault' not started" qvm-run -n vault true
t_out "still halted" Halted simctl state vault
t_out "autostart a halted VM" started qvm-run -p vault 'echo started'
t_out "now running" Running simctl state vault
t_rc "set-state Paused" 0 simctl set-state vault Paused
t_err "--no-autostart paused" 1 "Qube 'vault' is paused" qvm-run --no-auto vault true
t_out "autostart unpauses" ok qvm-run -p -a vault 'echo ok'
t_out "unpaused" Running simctl state vault

# argument errors
for opt in --service --localcmd=x --dispvm --all '--exclude=x' --frobnicate -x; do
    t_err "refused option $opt" 2 "*qvm-run: error: unrecognized arguments: $opt*" qvm-run -p "$opt" work true
done
t_err "no arguments" 2 '*required: VMNAME, COMMAND*' qvm-run
t_err "no COMMAND" 2 '*required: COMMAND*' qvm-run -p work
t_err "--user without value" 2 '*expected one argument*' qvm-run -p --user
t_err "unknown VM" 2 "*qvm-run: error: no such domain: 'nope'" qvm-run -p nope true
t_err "traversal VM name" 2 "*no such domain: '../vms/work'" qvm-run -p ../vms/work true
t_err "dom0" 2 '*dom0*not supported*' qvm-run -p dom0 true
t_err "colour without filter" 2 '*--color-output must be used with --filter-escape-chars*' \
    qvm-run -p --no-filter-escape-chars --colour-output 31 work true
t_out "accepted no-op options" ok qvm-run --pass-io --no-gui --nogui --gui --no-colour-output \
    --no-color-stderr --colour-stderr 32 --filter-escape-chars --no-filter-escape-chars --autostart --auto work 'echo ok'
t_err "--help" 0 '' qvm-run --help

# spawns.log
: >"$QVM_SIM_DIR/spawns.log"
t_rc "spawn 1" 0 qvm-run -p work true
t_rc "spawn 2" 0 qvm-run -p other true
simctl set-state tpl Halted
t_rc "spawn 3 (refused by --no-autostart, still a spawn)" 1 qvm-run -p -n tpl true
simctl set-state tpl Running
t_rc "not a spawn (bad option)" 2 qvm-run --bogus work true
t_rc "not a spawn (unknown VM)" 2 qvm-run -p nope true
t_rc "simctl exec is not a spawn" 0 simctl exec work true
t_out "simctl spawns" 3 simctl spawns
t_out "simctl spawns work" 1 simctl spawns work
t_out "simctl spawns nope" 0 simctl spawns nope
t_true "spawns.log line format" grep -Eq '^[0-9]{13} work true$' "$QVM_SIM_DIR/spawns.log"
: >"$QVM_SIM_DIR/spawns.log"
for i in $(seq 40); do qvm-run -p work "echo $i$(printf 'x%.0s' {1..300})" >/dev/null & done
wait
t_out "40 concurrent spawns logged" 40 simctl spawns work
t_out "no interleaved lines" 40 grep -cE '^[0-9]{13} work echo [0-9]+x{300}$' "$QVM_SIM_DIR/spawns.log"
t_rc "multi-line command" 0 qvm-run -p work $'true\ntrue'
t_out "newline escaped in log" 1 grep -c 'work true\\ntrue$' "$QVM_SIM_DIR/spawns.log"

# hostile-agent hook
printf '#!/bin/sh\necho "HOSTILE($QVM_SIM_VM) $*"\n' >"$QVM_SIM_DIR/bin/sim-hostile"
chmod 0755 "$QVM_SIM_DIR/bin/sim-hostile"
printf '%s\n' "$QVM_SIM_DIR/bin/sim-hostile" >"$QVM_SIM_DIR/vms/work/agent"
t_out "agent file (path): shell string" 'HOSTILE(work) ' qvm-run -p work 'qvm-remote agent'
t_out "agent file (path): --once" 'HOSTILE(work) --once' qvm-run -p work 'qvm-remote agent --once'
t_out "agent file (path): argv" 'HOSTILE(work) --once' qvm-run -p work qvm-remote agent --once
t_out "agent file: other commands unaffected" 'x' qvm-run -p work echo x
t_out "agent file: other VMs unaffected" 'other-ok' qvm-run -p other 'qvm-remote agent 2>/dev/null || echo other-ok'
cp -- "$QVM_SIM_DIR/bin/sim-hostile" "$QVM_SIM_DIR/vms/work/agent"
chmod 0755 "$QVM_SIM_DIR/vms/work/agent"
t_out "agent file (executable)" 'HOSTILE(work) --once' qvm-run -p work 'qvm-remote agent --once'
rm -f -- "$QVM_SIM_DIR/vms/work/agent"

# ---------------------------------------------------------------- simctl exec
t_out "simctl exec shell" work simctl exec work 'echo $QVM_SIM_VM'
t_out "simctl exec argv" 'a b' simctl exec work echo 'a b'
t_rc "simctl exec exit status" 9 simctl exec work sh -c 'exit 9'
STDIN=$scratch/one t_out "simctl exec stdin" x simctl exec work cat
simctl set-state vault Halted
t_err "simctl exec in halted VM" 1 '*Halted*' simctl exec vault true
t_rc "simctl exec unknown VM" 1 simctl exec nope true

if ((root)); then
    t_out "simctl exec id -u is the VM uid" 60100 simctl exec work id -u
    t_out "qvm-run id -u" 60101 qvm-run -p other id -u
    t_out "VM has only its own group" '60100 60100' simctl exec work sh -c 'echo $(id -g) $(id -G)'
    t_out "--user root runs as root" '0 root' qvm-run -p -u root work 'echo $(id -u) $USER'
    printf 'secret\n' >"$QVM_SIM_DIR/vms/other/home/secret"
    chown 60101:60101 "$QVM_SIM_DIR/vms/other/home/secret"
    t_rc "VM cannot read another VM's home" 1 simctl exec work cat "$QVM_SIM_DIR/vms/other/home/secret"
    t_rc "VM cannot list another VM's home" 2 simctl exec work ls "$QVM_SIM_DIR/vms/other/home"
    t_out "VM can read its own home" secret simctl exec other cat secret
    t_rc "VM can write its home" 0 simctl exec work sh -c 'echo x > mine'
    t_out "file owned by VM uid" 60100 stat -c %u "$QVM_SIM_DIR/vms/work/home/mine"
    t_rc "VM cannot write spawns.log" 2 simctl exec work sh -c 'echo x >> "$QVM_SIM_DIR/spawns.log"'
    t_rc "VM cannot write another VM's state" 2 simctl exec work sh -c 'echo Halted > "$QVM_SIM_DIR/vms/other/state"'
    t_out "VM can run bin/ programs" 'hello from work' simctl exec work sim-hello
fi

# ---------------------------------------------------------------- qvm-prefs
t_out "qvm-prefs get" sys-firewall qvm-prefs work netvm
t_out "qvm-prefs get memory" 400 qvm-prefs work memory
t_out "qvm-prefs label" red qvm-prefs work label
t_out "qvm-prefs klass" AppVM qvm-prefs work klass
t_out "qvm-prefs name" work qvm-prefs work name
t_rc "qvm-prefs set" 0 qvm-prefs work memory 800
t_out "qvm-prefs after set" 800 qvm-prefs work memory
t_out "qvm-ls sees prefs" 'work|800' qvm-ls --raw-data --fields NAME,MEMORY work
t_rc "qvm-prefs --default" 0 qvm-prefs --default work memory
t_out "qvm-prefs default restored" 400 qvm-prefs work memory
t_rc "qvm-prefs set netvm none" 0 qvm-prefs work netvm none
t_out "qvm-prefs netvm None prints nothing" '' qvm-prefs work netvm
t_rc "qvm-check --networked without netvm" 1 qvm-check --networked work
t_rc "qvm-prefs -D netvm" 0 qvm-prefs -D work netvm
t_out "qvm-prefs netvm back" sys-firewall qvm-prefs work netvm
t_rc "qvm-prefs set label" 0 qvm-prefs work label green
t_out "label in qvm-ls" 'work|green' qvm-ls --raw-data --fields NAME,LABEL work
t_rc "qvm-prefs bad label" 1 qvm-prefs work label pink
t_rc "qvm-prefs set extra property" 0 qvm-prefs work default_user alice
t_out "qvm-prefs get extra property" alice qvm-prefs work default_user
t_err "qvm-prefs unknown property" 2 "*no such property: 'frobnicate'" qvm-prefs work frobnicate
t_err "qvm-prefs unknown property set" 2 "*no such property*" qvm-prefs work frobnicate 1
t_rc "qvm-prefs traversal property" 2 qvm-prefs work ../state
t_err "qvm-prefs unknown VM" 2 "*no such domain: 'nope'" qvm-prefs nope netvm
t_rc "qvm-prefs name read-only" 1 qvm-prefs work name x
run qvm-prefs work
t_true "qvm-prefs list format" grep -Eq '^memory +-  400$' "$out"
t_true "qvm-prefs list has label" grep -Eq '^label +-  green$' "$out"
t_true "qvm-prefs list sorted" cmp -s <(LC_ALL=C sort "$out") "$out"
t_out "qvm-prefs dom0 klass" AdminVM qvm-prefs dom0 klass

# ---------------------------------------------------------------- qubes-prefs
t_out "qubes-prefs get" fedora-40 qubes-prefs default_template
t_out "qubes-prefs clockvm" sys-net qubes-prefs clockvm
t_rc "qubes-prefs set" 0 qubes-prefs updatevm sys-whonix
t_out "qubes-prefs after set" sys-whonix qubes-prefs updatevm
t_rc "qubes-prefs -D" 0 qubes-prefs -D updatevm
t_out "qubes-prefs default" sys-net qubes-prefs updatevm
t_rc "qubes-prefs unknown" 2 qubes-prefs frobnicate
run qubes-prefs
t_true "qubes-prefs list" grep -Eq '^default_netvm +-  sys-firewall$' "$out"

# ---------------------------------------------------------------- start / shutdown / pause
t_rc "qvm-start halted" 0 qvm-start vault
t_out "started" Running simctl state vault
t_err "qvm-start running" 1 '*domain vault is already running*' qvm-start vault
t_rc "qvm-start --skip-if-running" 0 qvm-start --skip-if-running vault
t_rc "qvm-start unknown" 2 qvm-start nope

bg_start qvm-run -p vault 'sleep 60'
for _ in $(seq 50); do
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == sleep ]] && break
    sleep 0.05
done
t_rc "qvm-pause" 0 qvm-pause vault
t_out "paused" Paused simctl state vault
t_true "VM process stopped" grep -q '^State:.*T' "/proc/$pid/status"
t_rc "qvm-check --paused" 0 qvm-check --paused vault
t_rc "qvm-check --running includes paused" 0 qvm-check --running vault
t_rc "qvm-unpause" 0 qvm-unpause vault
t_true "VM process continued" grep -Eq '^State:.*(S|R)' "/proc/$pid/status"
t_rc "qvm-unpause not paused" 1 qvm-unpause vault
t_rc "qvm-shutdown" 0 qvm-shutdown --wait vault
t_out "halted" Halted simctl state vault
bg_wait
t_true "shutdown ended the VM's processes (exit $rc)" test "$rc" = 143
t_rc "qvm-shutdown halted VM" 0 qvm-shutdown vault
t_rc "qvm-pause halted VM" 1 qvm-pause vault
bg_start qvm-run -p vault 'trap "" TERM; sleep 60'
sleep 0.3
t_rc "qvm-kill" 0 qvm-kill vault
bg_wait
t_true "qvm-kill SIGKILLs (exit $rc)" test "$rc" = 137
t_out "killed VM halted" Halted simctl state vault
t_rc "qvm-shutdown unknown" 2 qvm-shutdown nope
t_rc "qvm-shutdown dom0" 1 qvm-shutdown dom0

# ---------------------------------------------------------------- tags / features / service
t_out "qvm-tags list" $'created-by-test\nwork-tag' qvm-tags work
t_rc "qvm-tags add" 0 qvm-tags work add zeta alpha
t_out "qvm-tags sorted" $'alpha\ncreated-by-test\nwork-tag\nzeta' qvm-tags work list
t_out "qvm-tags query present" zeta qvm-tags work list zeta
t_rc "qvm-tags query absent" 1 qvm-tags work list nope
t_rc "qvm-tags del" 0 qvm-tags work del zeta
t_rc "qvm-tags del absent" 0 qvm-tags work del zeta
t_out "qvm-tags after del" $'alpha\ncreated-by-test\nwork-tag' qvm-tags work ls
t_rc "qvm-tags invalid tag" 1 qvm-tags work add 'a/b'
t_rc "qvm-tags unknown VM" 2 qvm-tags nope
t_out "qvm-tags other VM empty" '' qvm-tags other
t_rc "qvm-features set" 0 qvm-features work vmexec 1
t_out "qvm-features get" 1 qvm-features work vmexec
t_rc "qvm-features get unset" 1 qvm-features work nope
t_rc "qvm-features set 2" 0 qvm-features work os Linux
t_out "qvm-features list" $'os      Linux\nvmexec  1' qvm-features work
t_rc "qvm-features unset" 0 qvm-features --unset work os
t_rc "qvm-features unset again" 0 qvm-features -D work os
t_rc "qvm-features traversal" 1 qvm-features work ../state x
t_rc "qvm-service enable" 0 qvm-service work crond on
t_rc "qvm-service --disable" 0 qvm-service work cups --disable
t_out "qvm-service get" on qvm-service work crond
t_out "qvm-service list" $'crond  on\ncups   off' qvm-service work
t_rc "qvm-service bad value" 1 qvm-service work crond maybe
t_out "service is a feature" 1 qvm-features work service.crond

# ---------------------------------------------------------------- timing
times=()
for _ in $(seq 20); do
    t0=${EPOCHREALTIME/[.,]/}
    qvm-run --pass-io --no-autostart work true
    t1=${EPOCHREALTIME/[.,]/}
    times+=($((t1 - t0)))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 10,11p | awk '{s+=$1} END {printf "%.2f", s/2/1000}')
printf 'qvm-run --pass-io --no-autostart work true: median %s ms over 20 spawns\n' "$median"

printf '%d passed, %d failed\n' "$pass" "$fail"
((fail == 0))
