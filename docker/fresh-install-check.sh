#!/usr/bin/env bash
# The README's install and test commands, run as a new user would on a fresh Debian bookworm
# machine: python3 and Debian's pip (so PEP 668 applies), ca-certificates, no uv, no pipx.
#
#   docker/fresh-install-check.sh [--install-only] [--host-cache] [--rootfs DIR] [--timeout S]
#                                 [--engine podman|chroot]
#
#   --install-only  stop after `uv sync --locked` (skip `uv run pytest`: ~500 tests, minutes)
#   --host-cache    reuse this host's uv cache through a copy-on-write overlay (nothing is
#                   written back): saves the ~6 GB download; the install itself still runs
#   --rootfs DIR    the debootstrapped root (default /var/tmp/dfshield-bookworm; made when
#                   missing with `debootstrap --variant=minbase`, needs root + debootstrap)
#
# Engine (--engine): podman when installed (the root imported as local/dfshield-fresh:bookworm; run with
# runc and `default_ulimits = []`, which this kind of host needs), else a chroot into the root.
# Inside, from a copy of the working tree (tracked + untracked, not ignored files):
#   1. `python3 -m pip install uv` must fail with externally-managed-environment (PEP 668):
#      the machine is the kind the README's install step has to work on;
#   2. `.ci/run`'s own fallback installs uv (no pipx, no python3-venv here: pip --target);
#   3. that uv is removed; the README's Debian/Ubuntu line: `apt-get install pipx`,
#      `pipx install uv`;
#   4. `bash .ci/run --install-only`: `uv sync --locked` with the uv of step 3;
#   5. unless --install-only: `uv run pytest`, the README's test command.
# The host's CA bundle is mounted (never copied into the root) for hosts behind a TLS proxy.
# Prints one `fresh-install: <step> <ok|FAILED> <seconds>s` line per step; exit 0 iff all ok.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL_ONLY=0 HOST_CACHE=0 ROOTFS=/var/tmp/dfshield-bookworm TIMEOUT=3600 ENGINE=
while [ $# -gt 0 ]; do
  case "$1" in
    --install-only) INSTALL_ONLY=1 ;;
    --host-cache) HOST_CACHE=1 ;;
    --rootfs) ROOTFS="$2"; shift ;;
    --timeout) TIMEOUT="$2"; shift ;;
    --engine) ENGINE="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

IMAGE=local/dfshield-fresh:bookworm
HOST_CA=/etc/ssl/certs/ca-certificates.crt
WORK="$(mktemp -d /var/tmp/dfshield-fresh.XXXXXX)"
cleanup() {
  if [ -n "${CHROOT_MOUNTS:-}" ]; then
    for m in $CHROOT_MOUNTS; do umount -l "$m" 2>/dev/null || true; done
  fi
  # Never follow a bind mount that failed to detach (the chroot's /dev is the host's).
  if grep -q " $WORK/" /proc/mounts; then
    echo "left $WORK in place: still mounted" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT

# ---- the root: python3 + Debian's pip, nothing else of ours
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || { echo "need debootstrap (apt-get install debootstrap)" >&2; exit 2; }
  echo "fresh-install: debootstrap bookworm into $ROOTFS"
  debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
    bookworm "$ROOTFS" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
fi

# ---- the working tree, as a clone would have it (no .venv, no caches, no secrets)
mkdir -p "$WORK/src"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/src"

cat >"$WORK/steps.sh" <<'STEPS'
set -uo pipefail
export PATH="$HOME/.local/bin:$PATH" SSL_CERT_FILE=/run/host-ca.crt PIP_CERT=/run/host-ca.crt \
  REQUESTS_CA_BUNDLE=/run/host-ca.crt DEBIAN_FRONTEND=noninteractive
cd /src
failed=0
step() {  # step NAME COMMAND...: run, time, report
  local name="$1" t0=$SECONDS rc; shift
  echo "---- $name: $*"
  "$@"; rc=$?
  if [ $rc -eq 0 ]; then echo "fresh-install: $name ok $((SECONDS - t0))s"
  else echo "fresh-install: $name FAILED (rc $rc) $((SECONDS - t0))s"; failed=1; fi
  return $rc
}
pep668() {
  local out; out="$(python3 -m pip install uv 2>&1)" && { echo "pip installed uv: not a PEP 668 system"; return 1; }
  grep -q externally-managed-environment <<<"$out" || { echo "$out"; return 1; }
  echo "refused as expected: externally-managed-environment"
}
ci_fallback() {
  command -v uv && { echo "uv already present"; return 1; }
  sed -n '/^install_uv()/,/^}/p' .ci/run >/tmp/install_uv.sh && . /tmp/install_uv.sh \
    && mkdir -p "$HOME/.local/bin" && install_uv && uv --version \
    && rm -rf "$HOME/.local/bin/uv" "$HOME/.local/uv-pip" "$HOME/.local/uv-venv" && hash -r
}
readme_debian() {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends pipx >/dev/null \
    && pipx install uv && uv --version
}
step pep668 pep668
step ci-fallback ci_fallback
step readme-install readme_debian || exit 1
step uv-sync-locked bash .ci/run --install-only || exit 1
if [ "${INSTALL_ONLY:-0}" != 1 ]; then step uv-run-pytest uv run pytest; fi
exit $failed
STEPS

CACHE_MOUNT=()
if [ "$HOST_CACHE" = 1 ]; then
  CACHE="$(uv cache dir 2>/dev/null || echo "$HOME/.cache/uv")"
fi

if [ -z "$ENGINE" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman; else ENGINE=chroot; fi
fi
t0=$SECONDS
if [ "$ENGINE" = podman ]; then
  printf '[containers]\ndefault_ulimits = []\n' >"$WORK/containers.conf"
  export CONTAINERS_CONF="$WORK/containers.conf"
  if ! podman image exists "$IMAGE"; then
    tar -C "$ROOTFS" -c . | podman import - "$IMAGE" >/dev/null
  fi
  [ "$HOST_CACHE" = 1 ] && CACHE_MOUNT=(-v "$CACHE:/root/.cache/uv:O")
  rc=0
  timeout "$TIMEOUT" podman --runtime runc run --rm --network host \
    -e INSTALL_ONLY="$INSTALL_ONLY" -e HOME=/root \
    -v "$HOST_CA:/run/host-ca.crt:ro" -v "$WORK/src:/src" -v "$WORK/steps.sh:/steps.sh:ro" \
    "${CACHE_MOUNT[@]}" "$IMAGE" bash /steps.sh || rc=$?
else
  [ "$(id -u)" = 0 ] || { echo "without podman this needs root (chroot)" >&2; exit 2; }
  # A throw-away copy of the root, so that every run starts fresh.
  cp -a "$ROOTFS" "$WORK/root"
  R="$WORK/root"
  mkdir -p "$R/src" "$R/run" "$R/root/.cache/uv"
  touch "$R/run/host-ca.crt" "$R/steps.sh"
  CHROOT_MOUNTS="$R/src $R/run/host-ca.crt $R/steps.sh $R/proc $R/dev"  # before mounting
  mount --bind "$WORK/src" "$R/src"
  mount --bind "$HOST_CA" "$R/run/host-ca.crt"
  mount --bind "$WORK/steps.sh" "$R/steps.sh"
  mount -t proc proc "$R/proc"
  mount --rbind /dev "$R/dev"
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  if [ "$HOST_CACHE" = 1 ]; then  # chroot has no overlay mount here: a plain copy
    cp -a "$CACHE/." "$R/root/.cache/uv/"
  fi
  rc=0
  timeout "$TIMEOUT" env -i INSTALL_ONLY="$INSTALL_ONLY" HOME=/root TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$R" bash /steps.sh || rc=$?
fi
echo "fresh-install: total $((SECONDS - t0))s rc=$rc"
exit $rc
