# One image for the whole fleet: the worker is chosen by the command
# (catalyst-persist, catalyst-cache, catalyst-sync, catalyst-backup,
# catalyst-migrate, catalyst-publish, topic-admin).
#
#   docker build -t catalyst-fleet:0.1.0 .
#   docker run --rm catalyst-fleet:0.1.0 catalyst-persist --help
#
# Build stage: Debian 12 with the -dev packages of .ci/install, CMake + Ninja.
# Runtime stage: Debian 12 slim with only the shared libraries the binaries
# load, pg_dump/psql 15 for catalyst-backup, and migrations/; runs as the
# unprivileged user 10001. tests/integration/test_deploy.sh checks that every
# library the binaries need comes from a package listed here and that the
# build stage has every -dev package of .ci/install.

ARG DEBIAN_RELEASE=bookworm

FROM debian:${DEBIAN_RELEASE} AS build
RUN apt-get update \
	&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		build-essential cmake ninja-build pkg-config \
		librdkafka-dev libpq-dev libhiredis-dev libprotobuf-c-dev protobuf-c-compiler \
		libcurl4-openssl-dev libssl-dev zlib1g-dev libdeflate-dev libmicrohttpd-dev libjansson-dev \
		check libsubunit-dev \
	&& rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY proto proto
COPY common common
COPY workers workers
COPY tests/tools tests/tools
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
	&& cmake --build build --target \
		catalyst-persist catalyst-cache catalyst-sync catalyst-backup \
		catalyst-migrate catalyst-publish topic-admin \
	&& mkdir -p /out \
	&& cd build/bin \
	&& install -m 0755 -s catalyst-persist catalyst-cache catalyst-sync catalyst-backup \
		catalyst-migrate catalyst-publish topic-admin /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# runtime libraries of the binaries (see CMakeLists.txt's pkg_check_modules),
# postgresql-client-15 for pg_dump/psql (its major version must be at least the
# server's), curl for docker-compose healthchecks, CA certificates for TLS
RUN apt-get update \
	&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		librdkafka1 libpq5 libhiredis0.14 libprotobuf-c1 libcurl4 zlib1g libdeflate0 \
		libmicrohttpd12 libjansson4 libssl3 \
		postgresql-client-15 ca-certificates curl \
	&& rm -rf /var/lib/apt/lists/* \
	&& groupadd --system --gid 10001 catalyst \
	&& useradd --system --uid 10001 --gid catalyst --home-dir /nonexistent --no-create-home \
		--shell /usr/sbin/nologin catalyst
COPY --from=build /out/ /usr/local/bin/
COPY migrations /usr/share/catalyst/migrations
# pg_dump and psql directly, not through Debian's pg_wrapper (a Perl script
# that picks a version by cluster configuration the container does not have)
ENV CATALYST_MIGRATIONS_DIR=/usr/share/catalyst/migrations \
	CATALYST_BACKUP_PG_DUMP=/usr/lib/postgresql/15/bin/pg_dump \
	CATALYST_BACKUP_PSQL=/usr/lib/postgresql/15/bin/psql
# numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
# migrate 5020, backup 5021, sync 5022, persist 5030, cache 5031 (/healthz, /readyz, /metrics)
EXPOSE 5020 5021 5022 5030 5031
# the workers handle SIGTERM themselves (drain, commit, leave) as PID 1 and
# reap their own children (catalyst-backup's pg_dump): no init wrapper, so a
# command: in compose or Kubernetes replaces exactly this
CMD ["catalyst-persist", "--help"]
