#!/bin/sh
# Like the official redis image: a `redis-server ...` command line runs without protected mode
# (the network, not a loopback-only default, decides who reaches it), data in the working dir.
set -e
if [ "${1:-}" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no --dir /data "$@"
fi
exec "$@"
