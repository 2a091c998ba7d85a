#!/bin/sh
# Entrypoint of the kvfs image (Dockerfile in this directory): runs `kvfs "$@"`.
#
# One thing is done first, for `mount`: a dead kvfs mount at the mountpoint -- left behind when the
# previous kvfs container was killed (SIGKILL, OOM, a crash), so that every access to it fails with
# "Transport endpoint is not connected" -- is detached with `umount -l`, so that a restarted
# container can mount again. With the rshared bind mount of docker-compose.yml the detach reaches
# the host as well. That is why the volume is mounted one level below the bind-mounted directory
# (/mnt/kvfs/vol1 under /mnt/kvfs): Docker only looks at /mnt/kvfs when it starts the container,
# so a dead mount at /mnt/kvfs/vol1 does not keep the container from starting.
set -eu

# Is $1 a kvfs mount in /proc/mounts whose daemon is gone?
dead_kvfs_mount() {
  awk -v p="$1" '$2 == p && $3 == "fuse.kvfs" { found = 1 } END { exit !found }' /proc/mounts &&
    ! stat "$1" >/dev/null 2>&1
}

if [ "${1:-}" = mount ]; then
  for arg in "$@"; do
    case "$arg" in /*) ;; *) continue ;; esac
    tries=0
    while dead_kvfs_mount "$arg" && [ "$tries" -lt 10 ]; do
      echo "kvfs-entrypoint: $arg is a dead kvfs mount (its daemon is gone); detaching it with umount -l" >&2
      umount -l "$arg"
      tries=$((tries + 1))
    done
  done
fi
exec kvfs "$@"
