#!/usr/bin/env bash
# Build the dfshield and Redis images from a locally bootstrapped Debian bookworm (no image
# registry needed), run redis + api + worker as hardened containers, and drive one analysis
# through them. Run it once per change to the images, not in CI: the dfshield image is ~6 GB.
#
#   docker/build-check.sh [--rootfs DIR] [--tree] [--skip-build] [--compose] [--keep]
#                         [--media FILE] [--timeout S] [--dry-run] [-h|--help]
#
#   --rootfs DIR   the debootstrapped root (default /var/tmp/dfshield-build-root; made when
#                  missing: `debootstrap --variant=minbase` + python3, pip, ca-certificates)
#   --tree         build the working tree (tracked + untracked, not ignored files) instead of
#                  the committed HEAD (`git archive HEAD`, the default: reproducible figures)
#   --skip-build   reuse the images already built (run and check only)
#   --compose      also bring docker-compose.yml up with podman-compose (profile cpu: redis,
#                  api, worker-cpu), the local images substituted, and analyse through it
#   --keep         leave the containers, network and volume running at the end
#   --media FILE   what to analyse (default tests/data/obama.jpg)
#   --timeout S    seconds to wait for ready and for the analysis (default 600 each)
#   --dry-run      print the build and run commands, run nothing
#
# Needs root, podman, buildah, runc, debootstrap (`apt-get install podman buildah runc
# debootstrap`). Images: local/debian:bookworm (the root, imported), local/redis:bookworm
# (docker/redis.Dockerfile: Debian's redis-server) and localhost/dfshield:local (docker/Dockerfile
# with PYTHON_IMAGE=local/debian:bookworm, PYTHON=/usr/bin/python3.11, UV_SOURCE=pip).
# The host's CA bundle is mounted into RUN steps (for a TLS-inspecting proxy), never copied in.
# Containers run with runc and a containers.conf with `default_ulimits = []` (crun and the
# default rlimits fail on this kind of host). api and worker run as the image's uid 10001 with
# --read-only, a tmpfs /tmp, --cap-drop ALL and no-new-privileges; the script proves each.
# Prints `build-check: <what> <figure>` lines; exit 0 iff every check passed.
# shellcheck disable=SC2329  # cleanup/analyse/prove run through trap and check()
set -euo pipefail
cd "$(dirname "$0")/.."

ROOTFS=/var/tmp/dfshield-build-root TREE=0 SKIP_BUILD=0 COMPOSE=0 KEEP=0 DRY_RUN=0
MEDIA=tests/data/obama.jpg TIMEOUT=600
usage() { awk 'NR > 1 && /^#/ && !/shellcheck/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rootfs) ROOTFS="$2"; shift ;;
    --tree) TREE=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --compose) COMPOSE=1 ;;
    --keep) KEEP=1 ;;
    --media) MEDIA="$2"; shift ;;
    --timeout) TIMEOUT="$2"; shift ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -f "$MEDIA" ] || { echo "no such media file: $MEDIA" >&2; exit 2; }
case "$TIMEOUT" in ''|*[!0-9]*) echo "--timeout wants seconds" >&2; exit 2 ;; esac

BASE=localhost/local/debian:bookworm
REDIS_IMAGE=localhost/local/redis:bookworm
APP_IMAGE=localhost/dfshield:local
HOST_CA=/etc/ssl/certs/ca-certificates.crt
NET=dfshield-check VOL=dfshield-check-data PREFIX=dfshield-check
API_PORT=18000
HARDEN=(--read-only --tmpfs "/tmp:rw,nosuid,nodev,size=256m" --cap-drop ALL
        --security-opt no-new-privileges)
BUILD_ARGS=(--build-arg "PYTHON_IMAGE=$BASE" --build-arg PYTHON=/usr/bin/python3.11
            --build-arg UV_SOURCE=pip --build-arg SSL_CERT_FILE=/run/host-ca.crt
            --build-arg PIP_CERT=/run/host-ca.crt -v "$HOST_CA:/run/host-ca.crt:ro")

run() {  # print, and run unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}
figure() { echo "build-check: $*"; }
FAILED=0
check() {  # check NAME COMMAND...: a pass/fail line
  if "${@:2}"; then figure "$1 ok"; else figure "$1 FAILED"; FAILED=1; fi
}

WORK="$(mktemp -d /var/tmp/dfshield-build-check.XXXXXX)"
printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$WORK/containers.conf"
export CONTAINERS_CONF="$WORK/containers.conf"
PODMAN=(podman --runtime runc)

cleanup() {
  if [ "$KEEP" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    for c in worker api redis; do "${PODMAN[@]}" rm -f -v -t 30 "$PREFIX-$c" >/dev/null 2>&1 || true; done
    "${PODMAN[@]}" network rm "$NET" >/dev/null 2>&1 || true
    "${PODMAN[@]}" volume rm "$VOL" >/dev/null 2>&1 || true
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. the local base image
if [ "$SKIP_BUILD" = 0 ]; then
  t0=$SECONDS
  if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
    run debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates \
      bookworm "$ROOTFS"
    # Package caches are no part of a base image (~90 MB).
    [ "$DRY_RUN" = 1 ] || rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  fi
  if [ "$DRY_RUN" = 1 ] || ! podman image exists "$BASE"; then
    echo "+ tar -C $ROOTFS -c . | podman import - $BASE"
    [ "$DRY_RUN" = 1 ] || tar -C "$ROOTFS" -c . | podman import -q - "$BASE" >/dev/null
  fi
  figure "base $BASE ready $((SECONDS - t0))s"

  # -------------------------------------------------------------- 2. the build context
  mkdir -p "$WORK/ctx"
  if [ "$TREE" = 1 ]; then
    git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/ctx"
  else
    git archive HEAD | tar -xf - -C "$WORK/ctx"
  fi
  if [ "$TREE" = 1 ]; then figure "context working tree"
  else figure "context HEAD $(git rev-parse --short HEAD)"; fi

  # -------------------------------------------------------------- 3. the images
  t0=$SECONDS
  run buildah bud --isolation chroot --format docker --layers -f "$WORK/ctx/docker/redis.Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE" -t "$REDIS_IMAGE" "$WORK/ctx/docker"
  figure "build redis $((SECONDS - t0))s"
  t0=$SECONDS
  run buildah bud --isolation chroot --format docker --layers -f "$WORK/ctx/docker/Dockerfile" \
    "${BUILD_ARGS[@]}" -t "$APP_IMAGE" "$WORK/ctx"
  figure "build dfshield $((SECONDS - t0))s"
fi
if [ "$DRY_RUN" = 0 ]; then
  for img in "$BASE" "$REDIS_IMAGE" "$APP_IMAGE"; do
    figure "size $img $(podman image inspect --format '{{.Size}}' "$img" \
      | awk '{printf "%.2f GB", $1 / 1e9}')"
  done
fi

# ---------------------------------------------------------------- 4. run redis + api + worker
KEY="check-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
KEY_HASH="sha256\$$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
SECRET="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# Key hash and webhook secret go by name only (`-e NAME`: podman reads this environment), so
# that neither shows on a command line; the plaintext key stays in this shell.
export DFSHIELD_API_KEYS="$KEY_HASH:submit+read" DFSHIELD_WEBHOOK_SECRET="$SECRET"
APP_ENV=(-e DFSHIELD_ENVIRONMENT=production -e DFSHIELD_API_KEYS -e DFSHIELD_WEBHOOK_SECRET
         -e DFSHIELD_DEVICE=cpu)

# A private network when this host's podman can make one (netavark/CNI + iptables), else the
# host's loopback (redis and the api on 127.0.0.1 only).
if [ "$DRY_RUN" = 0 ] && "${PODMAN[@]}" network create "$NET" >/dev/null 2>&1 \
    && "${PODMAN[@]}" run --rm --network "$NET" "$BASE" true >/dev/null 2>&1; then
  NETOPT=(--network "$NET") REDIS_URL="redis://$PREFIX-redis:6379/0"
  PUBLISH=(-p "127.0.0.1:$API_PORT:8000") REDIS_ARGS=()
  figure "network private ($NET)"
else
  "${PODMAN[@]}" network rm "$NET" >/dev/null 2>&1 || true
  NETOPT=(--network host) REDIS_URL="redis://127.0.0.1:16379/0" PUBLISH=()
  REDIS_ARGS=(--bind 127.0.0.1 --port 16379)
  APP_ENV+=(-e "DFSHIELD_PORT=$API_PORT")
  figure "network host loopback ($([ "$DRY_RUN" = 1 ] && echo 'dry run: not probed' \
    || echo 'no private network here'))"
fi
APP_ENV+=(-e "DFSHIELD_REDIS_URL=$REDIS_URL")

[ "$DRY_RUN" = 1 ] || "${PODMAN[@]}" volume create "$VOL" >/dev/null
t_start=$SECONDS
run "${PODMAN[@]}" run -d --name "$PREFIX-redis" "${NETOPT[@]}" "${HARDEN[@]}" \
  "$REDIS_IMAGE" redis-server --appendonly yes --appendfsync everysec \
  --maxmemory-policy noeviction "${REDIS_ARGS[@]}"
run "${PODMAN[@]}" run -d --name "$PREFIX-api" "${NETOPT[@]}" "${PUBLISH[@]}" "${HARDEN[@]}" \
  -v "$VOL:/data" "${APP_ENV[@]}" "$APP_IMAGE" dfshield api --host 0.0.0.0
run "${PODMAN[@]}" run -d --name "$PREFIX-worker" "${NETOPT[@]}" "${HARDEN[@]}" \
  -v "$VOL:/data" "${APP_ENV[@]}" "$APP_IMAGE" dfshield worker
[ "$DRY_RUN" = 1 ] && exit 0

API="http://127.0.0.1:$API_PORT"
logs() { for c in redis api worker; do echo "---- $c"; "${PODMAN[@]}" logs --tail 30 "$PREFIX-$c" 2>&1; done; }
ready=0
while [ $((SECONDS - t_start)) -lt "$TIMEOUT" ]; do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/readyz")" = 200 ]; then ready=1; break; fi
  sleep 1
done
if [ "$ready" = 0 ]; then figure "ready FAILED after ${TIMEOUT}s"; logs; exit 1; fi
figure "ready $((SECONDS - t_start))s (containers started -> /readyz 200)"

# ---------------------------------------------------------------- 5. one analysis
analyse() {  # analyse BASE_URL LABEL: submit MEDIA, poll until done, check the verdict JSON
  local base="$1" label="$2" t0 id body status
  t0=$(date +%s.%N)
  body="$(curl -sf -H "Authorization: Bearer $KEY" -F "file=@$MEDIA" "$base/v1/analyze")" \
    || { figure "$label submit FAILED"; return 1; }
  id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$body")"
  while :; do
    body="$(curl -sf -H "Authorization: Bearer $KEY" "$base/v1/analyses/$id")" || return 1
    status="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' <<<"$body")"
    case "$status" in done|failed) break ;; esac
    if python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 < $TIMEOUT else 1)"; then
      sleep 0.2
    else
      figure "$label analysis timed out ($status)"; return 1
    fi
  done
  figure "$label analysis $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}s')") ($MEDIA)"
  printf %s "$body" >"$WORK/$label.json"
  python3 - "$label" "$WORK/$label.json" <<'PY'
import json, sys
label, a = sys.argv[1], json.load(open(sys.argv[2]))
print(json.dumps({k: a.get(k) for k in ("id", "status", "summary", "device", "timings_ms",
                                         "warnings", "error")}, indent=1))
s = a.get("summary") or {}
ok = (a["status"] == "done" and s.get("verdict") in ("real", "fake", "attacked", "uncertain")
      and s.get("faces", {}) and sum(s["faces"].values()) >= 1 and a.get("models"))
print(f"build-check: {label} verdict {s.get('verdict')} faces {s.get('faces')}")
sys.exit(0 if ok else 1)
PY
}
check "analysis-json" analyse "$API" podman || logs

# ---------------------------------------------------------------- 6. the hardening, proved
prove() {  # prove LABEL CONTAINER: uid 10001, read-only /, no capabilities, no_new_privs, tmpfs /tmp
  local c="$2" out
  out="$("${PODMAN[@]}" exec "$c" sh -c 'id; grep -E "^(CapEff|CapBnd|NoNewPrivs)" /proc/1/status;
    touch /probe 2>&1; touch /tmp/probe && echo "tmp writable"; touch /data/probe && echo "data writable";
    rm -f /tmp/probe /data/probe; grep -E " / | /tmp " /proc/mounts' 2>&1)" || true
  while IFS= read -r line; do echo "  $1: $line"; done <<<"$out"
  "${PODMAN[@]}" inspect --format "  $1: inspect ReadonlyRootfs={{.HostConfig.ReadonlyRootfs}} CapDrop={{.HostConfig.CapDrop}} SecurityOpt={{.HostConfig.SecurityOpt}} User={{.Config.User}}" "$c"
  grep -q "uid=10001" <<<"$out" && ! grep -q "uid=0" <<<"$out" \
    && grep -q "Read-only file system" <<<"$out" \
    && grep -q "CapEff:.*0000000000000000" <<<"$out" \
    && grep -q "CapBnd:.*0000000000000000" <<<"$out" \
    && grep -q "NoNewPrivs:.*1" <<<"$out" \
    && grep -q "tmp writable" <<<"$out" && grep -q "data writable" <<<"$out"
}
check "hardening-api" prove api "$PREFIX-api"
check "hardening-worker" prove worker "$PREFIX-worker"
# ... and the service still works after the probes (the same analysis again, warm).
check "analysis-after-probes" analyse "$API" podman-warm

# ---------------------------------------------------------------- 7. docker-compose.yml
if [ "$COMPOSE" = 1 ]; then
  for c in worker api redis; do "${PODMAN[@]}" rm -f -v -t 30 "$PREFIX-$c" >/dev/null; done
  # podman-compose from PyPI in a throw-away tool environment (nothing added to the project).
  PC=(uvx --from podman-compose podman-compose --in-pod false)  # containers, as docker compose
  # The one substitution compose cannot take from the environment: Redis's image.
  printf 'services:\n  redis:\n    image: %s\n' "$REDIS_IMAGE" >"$WORK/compose.local.yml"
  export DFSHIELD_IMAGE="$APP_IMAGE" DFSHIELD_API_PORTS="127.0.0.1:$API_PORT" \
    DFSHIELD_WORKER_DEVICE=cpu
  CF=(-f docker-compose.yml -f "$WORK/compose.local.yml" --profile cpu)
  compose_down() { "${PC[@]}" "${CF[@]}" down -v >/dev/null 2>&1 || true; }
  [ "$KEEP" = 1 ] || trap 'compose_down; cleanup' EXIT
  # podman runs HEALTHCHECKs from systemd timers; without systemd (a container, a chroot) none
  # ever runs and `condition: service_healthy` never holds, so tick them from here instead.
  if [ ! -d /run/systemd/system ]; then
    ( while :; do
        for c in $(podman ps -q --filter label=com.docker.compose.project=dfshield); do
          podman healthcheck run "$c" >/dev/null 2>&1 || true
        done
        sleep 2
      done ) &
    TICKER=$!
    figure "compose healthchecks ticked by this script (no systemd here)"
  fi
  t_start=$SECONDS
  if "${PC[@]}" "${CF[@]}" up -d --no-build redis api worker-cpu \
      >"$WORK/compose.log" 2>&1; then
    ready=0
    while [ $((SECONDS - t_start)) -lt "$TIMEOUT" ]; do
      if [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/readyz")" = 200 ]; then ready=1; break; fi
      sleep 1
    done
    if [ "$ready" = 1 ]; then
      figure "compose ready $((SECONDS - t_start))s"
      podman ps -a --filter label=com.docker.compose.project=dfshield \
        --format '  compose: {{.Names}} {{.Image}} {{.Status}} {{.Networks}}'
      check "compose-analysis" analyse "$API" compose
      for svc in api worker-cpu; do
        c="$(podman ps -q --filter label=com.docker.compose.project=dfshield \
          --filter "label=com.docker.compose.service=$svc")"
        check "compose-hardening-$svc" prove "compose-$svc" "$c"
      done
    else
      figure "compose FAILED: not ready after ${TIMEOUT}s"; FAILED=1
      "${PC[@]}" "${CF[@]}" logs 2>&1 | tail -40
    fi
  else
    figure "compose FAILED: up"; FAILED=1; tail -40 "$WORK/compose.log"
  fi
fi

[ -z "${TICKER:-}" ] || kill "$TICKER" 2>/dev/null || true
figure "done rc=$FAILED"
exit "$FAILED"
