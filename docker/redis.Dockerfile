# A Redis image from any Debian-class base, for hosts that cannot pull the official `redis` image
# (docker/build-check.sh builds it from a locally bootstrapped Debian bookworm). Users keep the
# official image that docker-compose.yml names; this one runs the same compose command line.
#
#   buildah bud -f docker/redis.Dockerfile --build-arg BASE_IMAGE=local/debian:bookworm \
#       -t local/redis:bookworm docker/
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# uid/gid 999 like the official image, created first so that the package reuses them.
# Debian stable's redis-server (7.0 in bookworm): point releases are security fixes, so no pin.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && mkdir -p /data \
    && chown redis:redis /data

COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint.sh

WORKDIR /data
VOLUME ["/data"]
USER 999:999
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]
CMD ["redis-server"]
