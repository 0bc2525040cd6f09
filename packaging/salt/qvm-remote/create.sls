# qvm-remote, step 1 of 3, in dom0: the client VM exists.
#   sudo qubesctl state.apply qvm-remote.create
{%- from "qvm-remote/map.jinja" import qvm_remote with context %}

qvm-remote-client-vm:
  qvm.present:
    - name: {{ qvm_remote.vm }}
    - label: {{ qvm_remote.label }}
{%- if qvm_remote.template %}
    - template: {{ qvm_remote.template }}
{%- endif %}
