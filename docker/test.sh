#!/usr/bin/env bash
# `make test-docker`: the image as a user meets it. Starts a Docker engine if none answers
# (dockerd --bridge=none --iptables=false --ip-masq=false: no bridge network is ever made;
# containers use the host's loopback), makes the base images if missing (docker/base-images.sh),
# builds the image (timed), builds it again after a one-line source change (timed: the
# dependency cache must hold), then on a bind-mounted data dir runs every stage with
# `docker run --network host`, loads into the CQL test server on loopback, and compares the
# tables with a run of the host binary on the same landing files; `run --follow` is stopped
# with `docker stop` and must exit 0 with nothing lost; the compose file must validate.
# Without a Docker engine it says SKIPPED and why, and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${CARGO_TARGET_DIR:-$root/target}/debug
PIPELINE=${PIPELINE:-$bin/pipeline}
CQL_SERVER=${CQL_SERVER:-$bin/cql-test-server}
work=$root/target/docker-test
IMAGE=pipeline:latest  # the tag the compose file and `make docker` use
rm -rf "$work" && mkdir -p "$work"
log() { echo "test-docker: $*"; }
skip() { echo; echo "*** SKIPPED: $*: the Docker image was NOT tested ***"; echo; exit 0; }
fail() { echo "test-docker: FAILED: $*" >&2; exit 1; }

# Debian's client speaks to Debian's engine and has BuildKit built in.
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi

# --- the engine -------------------------------------------------------------------------
if [ -z "$DOCKER" ] || ! "$DOCKER" info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    (apt-get update -q >/dev/null 2>&1; apt-get install -y -q docker.io >/dev/null 2>&1) || skip "no Docker engine, and Debian's docker.io could not be installed"
    DOCKER=/usr/bin/docker
  fi
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers, and starting one needs root"
  log "starting dockerd --bridge=none --iptables=false --ip-masq=false"
  dockerd --bridge=none --iptables=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
  for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; skip "dockerd did not start"; }
fi
command -v debootstrap >/dev/null || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q debootstrap >/dev/null 2>&1; } || true
DOCKER=$DOCKER bash docker/base-images.sh

# --- build, twice -----------------------------------------------------------------------
# The image users run is built with the release profile. CI builds the same Dockerfile with
# the dev profile (DOCKER_CARGO_PROFILE overrides): a cold release build of DataFusion and
# delta-rs is ~45 min on 2 cores, which with the rest would take CI near its limit.
profile=${DOCKER_CARGO_PROFILE:-$([ "${CI:-}" = true ] && echo dev || echo release)}
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
build() {  # context, log name, tag: prints the seconds it took
  local t=$SECONDS
  DOCKER_BUILDKIT=1 "$DOCKER" build --network host --build-arg CARGO_PROFILE="$profile" \
    --build-arg REVISION="$revision" \
    -t "$3" "$1" >"$work/$2.log" 2>&1 || { tail -40 "$work/$2.log"; fail "docker build ($2)"; }
  echo $((SECONDS - t))
}
log "building the image, cargo profile $profile (builder cache before: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' 2>/dev/null | grep -i cache || echo none))"
first=$(build . build "$IMAGE")
log "first build: ${first} s"
# A one-line change to a source file, in a copy of the context: only our crate may recompile.
# CI builds once (DOCKER_REBUILD_CHECK=0 there by default): the check costs a release
# compile of our crate, and CI's cache is warm or empty, never "one line changed".
second=not-measured
if [ "${DOCKER_REBUILD_CHECK:-$([ "${CI:-}" = true ] && echo 0 || echo 1)}" = 1 ]; then
  changed=$work/changed-context
  mkdir -p "$changed"
  tar -c Cargo.toml Cargo.lock pipeline/Cargo.toml pipeline/build.rs pipeline/src cql-test-server/Cargo.toml \
    cql-test-server/src scylla docker/entrypoint.sh .dockerignore Dockerfile | tar -C "$changed" -x
  # Unique each time: an identical change would be a layer-cache hit on the next run.
  echo "// changed by docker/test.sh to time a rebuild: $(date +%s%N)" >>"$changed/pipeline/src/main.rs"
  second=$(build "$changed" rebuild pipeline:rebuild-check)
  log "build after a one-line source change: ${second} s"
  grep -q "Compiling pipeline" "$work/rebuild.log" || fail "the rebuild did not recompile the changed crate"
  if grep -E "Compiling (datafusion|deltalake|arrow|parquet|scylla)[-a-z0-9]* v" "$work/rebuild.log"; then
    fail "the rebuild after a one-line change recompiled dependencies: the cache did not hold"
  fi
  "$DOCKER" rmi pipeline:rebuild-check >/dev/null
fi
"$DOCKER" image inspect "$IMAGE" --format '{{json .Config.Labels}}' | grep -q '"org.opencontainers.image.version"' \
  || fail "OCI labels missing"
"$DOCKER" run --rm --network none "$IMAGE" --version | grep -qF "(commit $revision)" \
  || fail "the image's pipeline --version does not name commit $revision"

# --- a CQL test server on loopback ------------------------------------------------------
[ -x "$CQL_SERVER" ] || cargo build -q --locked -p cql-test-server
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CQL_SERVER" --port "$port" >"$work/cql-test-server.log" 2>&1 &
cql_pid=$!
follow_name=pipeline-test-follow-$$
cleanup() {
  kill "$cql_pid" 2>/dev/null || true
  "$DOCKER" rm -f "$follow_name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 1

# --- every stage in a container, on a bind-mounted data dir -----------------------------
data=$work/data && mkdir -p "$data"
as_me=(--user "$(id -u):$(id -g)")
scylla=(-e "SCYLLA_URI=127.0.0.1:$port" -e SCYLLA_KEYSPACE=docker_test)
run() {  # docker run IMAGE <args>, as the data dir's owner, on the host's network
  "$DOCKER" run --rm --network host "${as_me[@]}" -v "$data:/data" "${scylla[@]}" "$IMAGE" "$@"
}
gen=(generate --rows 20000 --days 4 --customers 300 --dirty-rate 0.02 --rows-per-file 2500)
run "${gen[@]}" >"$work/generate.out"
for stage in ingest aggregate profiles load verify; do
  run "$stage" >"$work/$stage.out" 2>&1 || { cat "$work/$stage.out"; fail "docker run $stage"; }
done
run lookup --customer 1 >"$work/lookup.out" || fail "docker run lookup"
grep -q "2024-" "$work/lookup.out" || fail "lookup printed no day: $(cat "$work/lookup.out")"
run sql "SELECT count(*) AS n FROM customer_transactions" --format csv >"$work/sql.out" || fail "docker run sql"
run report --out /data/report.html >/dev/null || fail "docker run report"
[ -s "$data/report.html" ] || fail "no report"
log "every stage ran in a container: $(tail -1 "$work/sql.out") transactions"

# The tables equal a run of the host binary on the same landing files.
host=$work/host-data && mkdir -p "$host"
cp -r "$data/_raw" "$host/"
"$PIPELINE" --data-dir "$host" run --stages ingest,aggregate,profiles >"$work/host-run.out" 2>&1 \
  || { cat "$work/host-run.out"; fail "the host run"; }
for q in \
  "SELECT transaction_id, customer_id, amount, transaction_date, source_file FROM customer_transactions ORDER BY transaction_id" \
  "SELECT transaction_id, rejection_reason, transaction_date FROM customer_transactions_quarantine ORDER BY transaction_id, rejection_reason" \
  "SELECT * FROM customer_daily_aggregates ORDER BY customer_id, transaction_date" \
  "SELECT * FROM customer_profiles ORDER BY customer_id"; do
  a=$("$PIPELINE" --data-dir "$data" sql "$q" --format csv | sha256sum)
  b=$("$PIPELINE" --data-dir "$host" sql "$q" --format csv | sha256sum)
  [ "$a" = "$b" ] || fail "the container's tables differ from the host's: $q"
done
log "the container's tables equal the host binary's"

# The default user (uid 10001) on a data dir it cannot write: one line says what to do.
locked=$work/locked && mkdir -p "$locked" && chmod 755 "$locked"
if [ "$(id -u)" = 0 ]; then
  out=$("$DOCKER" run --rm --network none -v "$locked:/data" "$IMAGE" generate --rows 10 2>&1 || true)
  echo "$out" | grep -q "not writable by uid 10001" || fail "no hint for an unwritable data dir: $out"
fi

# --- run --follow, stopped by docker stop -----------------------------------------------
"$DOCKER" run -d --name "$follow_name" --network host "${as_me[@]}" -v "$data:/data" "${scylla[@]}" \
  "$IMAGE" run --follow --interval 1s >/dev/null
run generate --batch 2 --rows 3000 --days 1 --start-date 2024-01-03 --customers 300 >/dev/null
want=$("$PIPELINE" --data-dir "$host" generate --batch 2 --rows 3000 --days 1 --start-date 2024-01-03 --customers 300 >/dev/null \
  && "$PIPELINE" --data-dir "$host" run --stages ingest,aggregate,profiles >/dev/null \
  && "$PIPELINE" --data-dir "$host" sql "SELECT count(*) FROM customer_transactions" --format csv | tail -1)
for _ in $(seq 120); do
  got=$("$PIPELINE" --data-dir "$data" sql "SELECT count(*) FROM customer_transactions" --format csv 2>/dev/null | tail -1 || true)
  [ "$got" = "$want" ] && break
  sleep 1
done
[ "$got" = "$want" ] || fail "run --follow did not ingest the second batch: $got rows, want $want"
t=$SECONDS
"$DOCKER" stop -t 60 "$follow_name" >/dev/null
code=$("$DOCKER" wait "$follow_name")
stopped=$((SECONDS - t))
"$DOCKER" logs "$follow_name" >"$work/follow.log" 2>&1
[ "$code" = 0 ] || { tail -20 "$work/follow.log"; fail "run --follow exited $code after docker stop"; }
run verify >"$work/verify-after-follow.out" 2>&1 || { cat "$work/verify-after-follow.out"; fail "verify after follow"; }
log "run --follow: docker stop ended it with exit 0 in ${stopped} s; nothing lost ($got rows), verify passes"

# --- a batch stage stopped by docker stop: exit 143, nothing half-committed, a rerun completes
# Stopped once its first data file is on disk (written, not yet committed), so the stop lands
# mid-ingest whatever the machine's speed; enough rows that the release image is still writing.
big=$work/big && mkdir -p "$big"
big_rows=$([ "$profile" = release ] && echo 8000000 || echo 2000000)
"$DOCKER" run --rm --network none "${as_me[@]}" -v "$big:/data" "$IMAGE" \
  generate --rows "$big_rows" --days 10 --customers 5000 --rows-per-file 20000 >/dev/null
batch_name=pipeline-test-batch-$$
"$DOCKER" run -d --name "$batch_name" --network none "${as_me[@]}" -v "$big:/data" "$IMAGE" ingest >/dev/null
for _ in $(seq 600); do
  [ -n "$(find "$big/customer_transactions" -name '*.parquet' -print -quit 2>/dev/null)" ] && break
  [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$batch_name")" = true ] || break
  sleep 0.1
done
t=$SECONDS
"$DOCKER" stop -t 30 "$batch_name" >/dev/null
code=$("$DOCKER" wait "$batch_name")
batch_stopped=$((SECONDS - t))
"$DOCKER" rm "$batch_name" >/dev/null
case "$code" in
  143) how="stopped mid-ingest: exit 143 in ${batch_stopped} s" ;;
  0) fail "ingest of $big_rows rows finished before docker stop reached it: the stop was not exercised" ;;
  *) fail "ingest stopped by docker stop exited $code (want 143)" ;;
esac
"$DOCKER" run --rm --network none "${as_me[@]}" -v "$big:/data" "$IMAGE" ingest >"$work/ingest-after-stop.out" 2>&1 \
  || { cat "$work/ingest-after-stop.out"; fail "ingest after docker stop"; }
# (A GROUP BY, which spills: count(DISTINCT) of 8M ids does not fit sql's 512 MiB pool.)
n=$("$PIPELINE" --data-dir "$big" sql "SELECT count(*) AS n FROM customer_transactions" --format csv | tail -1)
dup=$("$PIPELINE" --data-dir "$big" sql "SELECT count(*) AS d FROM (SELECT transaction_id FROM customer_transactions GROUP BY transaction_id HAVING count(*) > 1)" --format csv | tail -1)
[ "$n,$dup" = "$big_rows,0" ] || fail "after a stopped ingest and a rerun: $n rows, $dup ids more than once (want $big_rows rows, each once)"
log "a batch ingest $how; the rerun ingested every row once"
rm -rf "$big"

# --- the compose file -------------------------------------------------------------------
command -v docker-compose >/dev/null || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q docker-compose >/dev/null 2>&1; } || true
if command -v docker-compose >/dev/null; then
  docker-compose -f docker-compose.yml config >"$work/compose.out" 2>&1 || { cat "$work/compose.out"; fail "docker-compose config"; }
  grep -q "image: pipeline:latest" "$work/compose.out" || fail "compose services do not use the image"
  log "docker-compose config validates the compose file"
else
  echo "*** SKIPPED: docker-compose is not installed: the compose file was NOT validated ***"
fi
{
  echo "cargo profile: $profile"
  echo "first build: $first s"
  echo "rebuild after a one-line source change: $second s"
  echo "docker stop of run --follow: exit 0 in $stopped s"
  echo "docker stop of a batch ingest: $how"
} | tee "$work/timings.txt"
log "passed"
