# qvm-remote, step 3 of 3, in dom0: the client VM is served and holds a key that dom0
# generated. The key is made in dom0 from /dev/urandom and reaches the VM and dom0's
# key store on stdin only (qvm-remote-provision); the daemon never serves a VM without
# a key. This formula does not start or enable the daemon: that stays your decision
# (systemctl start qvm-remote-dom0, or qvm-remote-dom0 enable, which asks).
#   sudo qubesctl state.apply qvm-remote.authorize
{%- from "qvm-remote/map.jinja" import qvm_remote with context %}
{%- set vm_re = qvm_remote.vm | regex_escape %}

# Adds the VM to QVM_REMOTE_VMS (inside its quotes, if any) unless it is listed.
qvm-remote-config-lists-vm:
  file.replace:
    - name: /etc/qubes/remote.conf
    - pattern: '^QVM_REMOTE_VMS=(?!(?:.*[\s"''])?{{ vm_re }}(?:[\s"'']|$))(["'']?)(.*?)\1\s*$'
    - repl: 'QVM_REMOTE_VMS=\1\2 {{ qvm_remote.vm }}\1'

qvm-remote-key-provisioned:
  cmd.run:
    - name: /usr/lib/qvm-remote/qvm-remote-provision --user {{ qvm_remote.user }} {{ qvm_remote.vm }}
    - require:
      - file: qvm-remote-config-lists-vm
