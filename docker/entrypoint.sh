#!/usr/bin/env bash
# Entrypoint of the hvdspar images (docker/Dockerfile.cpu, docker/Dockerfile.gpu).
#
# Prepares passwordless SSH between the containers of a multi-node job (what
# horovodrun and mpirun use to start remote ranks), then runs the command:
#
#   sshd           only the SSH server, in the foreground (the nodes that do
#                  not launch the job)
#   anything else  that command; with HVDSPAR_SSHD=1 the SSH server runs
#                  beside it
#
# Keys: mount one directory holding the same key pair into every container at
# $HVDSPAR_SSH_KEYS (default /etc/hvdspar/ssh): id_ed25519, and optionally
# id_ed25519.pub and authorized_keys (more keys that may log in). Make it once:
#   mkdir ssh && ssh-keygen -q -t ed25519 -N '' -C hvdspar -f ssh/id_ed25519
# The SSH server listens on $HVDSPAR_SSH_PORT (default 2222) and runs as the
# container's user (no root needed); its host key is made per container. The
# SSH client is set up to use that port and key for every host.
set -euo pipefail

port=${HVDSPAR_SSH_PORT:-2222}
keys=${HVDSPAR_SSH_KEYS:-/etc/hvdspar/ssh}
ssh_dir=$HOME/.ssh
sshd_dir=$ssh_dir/sshd

say() { echo "hvdspar-entrypoint: $*" >&2; }

[[ $port =~ ^[0-9]+$ ]] || { say "HVDSPAR_SSH_PORT must be a port number, got '$port'"; exit 2; }

# Client side: the shared key and a config that reaches every node on $port.
setup_client() {
  install -d -m 700 "$ssh_dir"
  if [[ -e $keys/id_ed25519 ]]; then
    if [[ ! -r $keys/id_ed25519 ]]; then
      say "$keys/id_ed25519 is not readable by uid $(id -u); make the mounted keys readable by it (docker/README.md)"
      return 1
    fi
    install -m 600 "$keys/id_ed25519" "$ssh_dir/id_ed25519"
    local pub
    if [[ -r $keys/id_ed25519.pub ]]; then
      pub=$(<"$keys/id_ed25519.pub")
    else
      pub=$(ssh-keygen -y -f "$ssh_dir/id_ed25519")
    fi
    printf '%s\n' "$pub" > "$ssh_dir/id_ed25519.pub"
    {
      printf '%s\n' "$pub"
      if [[ -r $keys/authorized_keys ]]; then cat "$keys/authorized_keys"; fi
    } > "$ssh_dir/authorized_keys"
    chmod 600 "$ssh_dir/authorized_keys"
  fi
  cat > "$ssh_dir/config" <<EOF
# Written by hvdspar-entrypoint. Every container of a job runs sshd on port
# $port and shares one key pair; host keys are made per container, so they are
# not checked.
Host *
  Port $port
  IdentityFile $ssh_dir/id_ed25519
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
  chmod 600 "$ssh_dir/config"
}

# Server side: an sshd of this user on $port, with its own host key.
sshd_config() {
  [[ -s $ssh_dir/authorized_keys ]] || {
    say "no key pair at $keys: mount one there to accept SSH logins (docker/README.md)"
    return 1
  }
  install -d -m 700 "$sshd_dir"
  [[ -f $sshd_dir/ssh_host_ed25519_key ]] \
    || ssh-keygen -q -t ed25519 -N '' -C "${HOSTNAME:-hvdspar}" -f "$sshd_dir/ssh_host_ed25519_key"
  {
    echo "# Written by hvdspar-entrypoint."
    echo "Port $port"
    echo "HostKey $sshd_dir/ssh_host_ed25519_key"
    echo "PidFile $sshd_dir/sshd.pid"
    echo "AuthorizedKeysFile $ssh_dir/authorized_keys"
    echo "PubkeyAuthentication yes"
    echo "PasswordAuthentication no"
    echo "KbdInteractiveAuthentication no"
    echo "PermitRootLogin prohibit-password"
    echo "UsePAM no"
    echo "X11Forwarding no"
    echo "PrintMotd no"
    # sshd gives sessions a minimal environment; remote ranks need the image's
    # (the venv on PATH, CUDA libraries, the tracking server). horovodrun and
    # mpirun -x still override these per job.
    local name setenv=()
    while IFS= read -r name; do
      local value=${!name-}
      if [[ -n $value && $value != *'"'* && $value != *$'\n'* ]]; then
        setenv+=("$name=\"$value\"")
      fi
    done < <(compgen -e | grep -E '^(PATH|LD_LIBRARY_PATH|VIRTUAL_ENV|PYTHONUNBUFFERED|MLFLOW_[A-Z_]+|HVDSPAR_[A-Z_]+|NCCL_[A-Z_]+|HOROVOD_[A-Z_]+|TF_[A-Z_]+)$' || true)
    if (( ${#setenv[@]} )); then echo "SetEnv ${setenv[*]}"; fi
  } > "$sshd_dir/sshd_config"
  if (( $(id -u) == 0 )); then install -d -m 755 /run/sshd; fi  # privilege separation
  sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)             # must be an absolute path
  "$sshd_bin" -t -f "$sshd_dir/sshd_config"
}

if [[ ${1:-} == sshd ]]; then
  shift
  setup_client
  sshd_config
  say "sshd listening on port $port"
  exec "$sshd_bin" -D -e -f "$sshd_dir/sshd_config" "$@"
fi

if [[ -e $keys/id_ed25519 ]] || [[ ${HVDSPAR_SSHD:-0} == 1 ]]; then
  setup_client
fi
if [[ ${HVDSPAR_SSHD:-0} == 1 ]]; then
  sshd_config
  "$sshd_bin" -f "$sshd_dir/sshd_config"
  say "sshd started on port $port"
fi
if (( $# == 0 )); then set -- bash; fi
exec "$@"
