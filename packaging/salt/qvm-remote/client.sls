# qvm-remote, step 2 of 3, in the client VM: the static client, in /usr/local/bin,
# which an AppVM keeps across restarts. The file comes from this formula's files/
# directory, which the qvm-remote-dom0 package (make install-salt) fills.
#   sudo qubesctl --skip-dom0 --targets=VM state.apply qvm-remote.client

qvm-remote-client-binary:
  file.managed:
    - name: /usr/local/bin/qvm-remote
    - source: salt://qvm-remote/files/qvm-remote
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True
