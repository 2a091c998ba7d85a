#!/usr/bin/env bash
# kvfs on one host, from nothing: start etcd and Redis, format a volume on them, mount it, use it,
# unmount it, mount it again to see the data is still there, unmount, stop the servers.
#
# Everything goes through the public command line (`kvfs format`, `kvfs mount -d`, `kvfs status`,
# `kvfs umount`). The servers listen on free loopback ports and keep their data in a temp dir, and
# are stopped by pid; nothing is left behind, also when a step fails.
#
# Needs: root (FUSE with allow_other), etcd, redis-server, redis-cli, curl, libfuse2, and this
# repository built (npm ci). Run it from anywhere:
#   bash examples/host-mount/run.sh
# Set KVFS to another kvfs command to use that one (default: this checkout's bin/kvfs.js).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
read -r -a KVFS <<<"${KVFS:-node $REPO/bin/kvfs.js}"
kvfs() { "${KVFS[@]}" "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvfs-host-mount-XXXXXX")
chmod 755 "$WORK"
export KVFS_HOME=$WORK/home # run records and daemon logs of this example, not ~/.kvfs
MNT=$WORK/mnt
ETCD_PID=
REDIS_PID=

step() { printf '\n== %s\n' "$*"; }

cleanup() {
  local status=$?
  trap - EXIT
  set +e
  if grep -qs " $MNT fuse.kvfs " /proc/mounts; then
    kvfs umount "$MNT" || umount -l "$MNT"
  fi
  for pid in $REDIS_PID $ETCD_PID; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$WORK"
  [ "$status" -eq 0 ] || echo "run.sh: FAILED (exit $status)" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

# wait_for NAME PID COMMAND...: until COMMAND succeeds; fails at once if the server exited.
wait_for() {
  local name=$1 pid=$2
  shift 2
  for _ in $(seq 1 200); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log:" >&2
      tail -n 20 "$WORK/$name.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name did not become ready in 20 s" >&2
  return 1
}

step "start etcd and Redis on free loopback ports in $WORK"
ETCD_PORT=$(free_port)
PEER_PORT=$(free_port)
REDIS_PORT=$(free_port)
etcd --name kvfs-example --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "kvfs-example=http://127.0.0.1:$PEER_PORT" --log-level warn --logger zap \
  >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
mkdir "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --save '' --appendonly yes \
  --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
wait_for etcd "$ETCD_PID" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
wait_for redis "$REDIS_PID" redis-cli -p "$REDIS_PORT" ping
echo "etcd pid $ETCD_PID on 127.0.0.1:$ETCD_PORT, redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"

META=etcd://127.0.0.1:$ETCD_PORT/example
DATA=redis://127.0.0.1:$REDIS_PORT

step "kvfs format --meta $META --data $DATA"
kvfs format --meta "$META" --data "$DATA"

step "kvfs mount --meta $META $MNT -d"
mkdir "$MNT"
kvfs mount --meta "$META" "$MNT" -d
grep " $MNT " /proc/mounts

step "use it"
mkdir -p "$MNT/docs/notes"
echo "hello from kvfs" >"$MNT/docs/hello.txt"
printf 'line %s\n' $(seq 1 1000) >"$MNT/docs/notes/lines.txt"
head -c 5000000 /dev/urandom >"$WORK/random.bin"
cp "$WORK/random.bin" "$MNT/docs/random.bin"
mv "$MNT/docs/notes/lines.txt" "$MNT/docs/notes/numbers.txt"
ln -s ../hello.txt "$MNT/docs/notes/hello-link"
SUM=$(sha256sum <"$WORK/random.bin" | cut -d' ' -f1)
(cd "$MNT" && find . | sort)
cat "$MNT/docs/notes/hello-link"
wc -l <"$MNT/docs/notes/numbers.txt"
echo "random.bin sha256 $(sha256sum <"$MNT/docs/random.bin" | cut -d' ' -f1) (written: $SUM)"
df -h "$MNT" | tail -n 1

step "kvfs status --meta $META"
kvfs status --meta "$META"

step "kvfs umount $MNT"
kvfs umount "$MNT"
if grep -qs " $MNT " /proc/mounts; then echo "still mounted" >&2; exit 1; fi

step "mount again: the data is in etcd and Redis"
kvfs mount --meta "$META" "$MNT" -d
cat "$MNT/docs/hello.txt"
[ "$(sha256sum <"$MNT/docs/random.bin" | cut -d' ' -f1)" = "$SUM" ] && echo "random.bin: same sha256 after the remount"
[ "$(tail -n 1 "$MNT/docs/notes/numbers.txt")" = "line 1000" ] && echo "numbers.txt: 1000 lines"
kvfs umount "$MNT"

step "stop Redis and etcd"
kill "$REDIS_PID" "$ETCD_PID"
wait "$REDIS_PID" "$ETCD_PID" || true
REDIS_PID=
ETCD_PID=
echo "done"
