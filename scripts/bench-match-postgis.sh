#!/usr/bin/env bash
# The peer of `gpumesh bench match`: the same synthetic world and request stream answered
# by PostgreSQL 15 with PostGIS 3.3, which is what a team would build instead of a
# matching engine. Installs and starts what it needs (Debian), loads the world, and runs
# pgbench: read-only nearest-match queries, and durable bookings (a match reserved with
# FOR UPDATE SKIP LOCKED, plus the release of an older lease, in one committed
# transaction), on one and two connections. Prints one JSON object.
#
#   scripts/bench-match-postgis.sh [--containers N] [--requests N] [--seconds S]
#
# Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

containers=430000
requests=100000
seconds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --containers) containers=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { printf '== %s\n' "$*" >&2; }

if ! command -v pgbench >/dev/null || ! [ -d /usr/share/postgresql/15/extension ] || ! ls /usr/share/postgresql/15/extension/postgis.control >/dev/null 2>&1; then
  log "installing PostgreSQL 15 and PostGIS 3"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q postgresql-15 postgresql-15-postgis-3 postgresql-contrib >&2
fi
bin=/usr/lib/postgresql/15/bin

log "exporting the world and the requests"
cargo build --release -q
work=$(mktemp -d /tmp/gpumesh-postgis.XXXXXX)
chmod 755 "$work"
./target/release/gpumesh bench match --containers "$containers" --requests "$requests" --export "$work/csv" >&2
chmod -R a+rX "$work"

log "starting PostgreSQL in $work/data"
port=54329
mkdir -p "$work/data"
chown postgres "$work" "$work/data"
su postgres -c "$bin/initdb -D $work/data -A trust -U postgres" >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
shared_buffers = 2GB
work_mem = 16MB
max_wal_size = 4GB
synchronous_commit = on
fsync = on
jit = off
CONF
su postgres -c "$bin/pg_ctl -D $work/data -l $work/postgres.log -w start" >/dev/null
if [ -z "${GPUMESH_KEEP_POSTGIS:-}" ]; then
  trap 'su postgres -c "$bin/pg_ctl -D $work/data -m fast stop" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
else
  log "keeping the server: psql -h $work -p $port -U postgres"
fi
psql() { command psql -h "$work" -p "$port" -U postgres -v ON_ERROR_STOP=1 -q "$@"; }

log "loading $(wc -l < "$work/csv/groups.csv") groups and $requests requests"
psql <<SQL
CREATE EXTENSION postgis;
CREATE EXTENSION btree_gist;
CREATE EXTENSION tsm_system_rows;
CREATE TABLE groups (
  id int PRIMARY KEY, model smallint, lat float8, lon float8, country text, price numeric,
  tier smallint, free smallint, gpus smallint, vram int, images text[], online bool,
  geog geography(Point, 4326));
\copy groups (id, model, lat, lon, country, price, tier, free, gpus, vram, images, online) FROM '$work/csv/groups.csv' CSV
UPDATE groups SET geog = ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography;
-- Free groups only: by (model, place) and by (model, price).
CREATE INDEX groups_free_place ON groups USING gist (model, geog) WHERE free > 0 AND online;
CREATE INDEX groups_free_price ON groups (model, price) WHERE free > 0 AND online;
CREATE TABLE requests (
  id int PRIMARY KEY, models smallint[], count smallint, lat float8, lon float8, cap numeric,
  max_tier smallint, allow text[], deny text[], max_km float8, image text, image_policy text,
  policy text, geog geography(Point, 4326));
\copy requests (id, models, count, lat, lon, cap, max_tier, allow, deny, max_km, image, image_policy, policy) FROM '$work/csv/requests.csv' CSV
UPDATE requests SET geog = ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography;
CREATE TABLE leases (id bigserial PRIMARY KEY, group_id int NOT NULL, count smallint NOT NULL);
INSERT INTO leases (group_id, count) SELECT id, gpus - free FROM groups WHERE free < gpus;
ANALYZE;

-- The best few candidates, without locking (a nearest-neighbour scan on geography needs
-- rechecks, and locking there fails with "attempted to lock invisible tuple"). The query
-- is built with the request's values, one index scan per model, so that the planner sees
-- constants and uses the partial indexes, as a team tuning this would.
CREATE FUNCTION candidates(r requests, with_image bool, n int) RETURNS SETOF int
LANGUAGE plpgsql STABLE AS \$\$
DECLARE
  filters text;
  order_by text;
  parts text[] := '{}';
  m smallint;
BEGIN
  filters := format('g.free > 0 AND g.online AND g.free >= %s AND g.price <= %s AND g.tier <= %s',
                    r.count, r.cap, r.max_tier);
  IF cardinality(r.allow) > 0 THEN
    filters := filters || format(' AND g.country = ANY (%L::text[])', r.allow);
  END IF;
  IF cardinality(r.deny) > 0 THEN
    filters := filters || format(' AND NOT (g.country = ANY (%L::text[]))', r.deny);
  END IF;
  IF with_image THEN
    filters := filters || format(' AND %L = ANY (g.images)', r.image);
  END IF;
  IF r.policy = 'Price' AND r.max_km IS NULL THEN
    order_by := 'g.price';
  ELSE
    -- A nearest-neighbour scan of the index (the fastest of the orderings tried: sorting
    -- what ST_DWithin finds by ST_Distance was two to three times slower).
    order_by := format('g.geog <-> %L::geography', r.geog);
    IF r.max_km IS NOT NULL THEN
      filters := filters || format(' AND ST_DWithin(g.geog, %L::geography, %s, false)', r.geog, r.max_km * 1000);
    END IF;
  END IF;
  FOREACH m IN ARRAY r.models LOOP
    parts := parts || format('(SELECT g.id, %s AS k FROM groups g WHERE g.model = %s AND %s ORDER BY %s LIMIT %s)',
                             order_by, m, filters, order_by, n);
  END LOOP;
  RETURN QUERY EXECUTE format('SELECT id FROM (%s) u ORDER BY k LIMIT %s', array_to_string(parts, ' UNION ALL '), n);
END \$\$;

-- A read-only match.
CREATE FUNCTION find(rid int) RETURNS int LANGUAGE plpgsql STABLE AS \$\$
DECLARE r requests; picked int;
BEGIN
  SELECT * INTO r FROM requests WHERE id = rid;
  IF r.image_policy <> 'Any' THEN
    SELECT c INTO picked FROM candidates(r, true, 1) c;
  END IF;
  IF picked IS NULL AND r.image_policy <> 'Require' THEN
    SELECT c INTO picked FROM candidates(r, false, 1) c;
  END IF;
  RETURN picked;
END \$\$;

-- A durable booking: match, lock in the outer query, take the GPUs, record the lease, and
-- release a random older lease so that utilisation stays level.
CREATE FUNCTION book(rid int) RETURNS int LANGUAGE plpgsql AS \$\$
DECLARE r requests; picked int; old leases;
BEGIN
  SELECT * INTO r FROM requests WHERE id = rid;
  IF r.image_policy <> 'Any' THEN
    SELECT g.id INTO picked FROM groups g
      WHERE g.id IN (SELECT c FROM candidates(r, true, 3) c) AND g.free >= r.count
      ORDER BY CASE WHEN r.policy = 'Price' AND r.max_km IS NULL THEN g.price ELSE 0 END, g.geog <-> r.geog
      LIMIT 1 FOR UPDATE OF g SKIP LOCKED;
  END IF;
  IF picked IS NULL AND r.image_policy <> 'Require' THEN
    SELECT g.id INTO picked FROM groups g
      WHERE g.id IN (SELECT c FROM candidates(r, false, 3) c) AND g.free >= r.count
      ORDER BY CASE WHEN r.policy = 'Price' AND r.max_km IS NULL THEN g.price ELSE 0 END, g.geog <-> r.geog
      LIMIT 1 FOR UPDATE OF g SKIP LOCKED;
  END IF;
  IF picked IS NULL THEN
    RETURN NULL;
  END IF;
  UPDATE groups SET free = free - r.count WHERE id = picked;
  INSERT INTO leases (group_id, count) VALUES (picked, r.count);
  DELETE FROM leases WHERE id = (SELECT id FROM leases TABLESAMPLE SYSTEM_ROWS(1)) RETURNING * INTO old;
  IF old.id IS NOT NULL THEN
    UPDATE groups SET free = free + old.count WHERE id = old.group_id;
  END IF;
  RETURN picked;
END \$\$;
SQL

cat > "$work/find.sql" <<SQL
\set rid random(0, $((requests - 1)))
SELECT find(:rid);
SQL
cat > "$work/book.sql" <<SQL
\set rid random(0, $((requests - 1)))
SELECT book(:rid);
SQL
# The simplest question, for reference: the nearest free group of one
# model to a random point, no other constraint.
cat > "$work/nearest.sql" <<SQL
\\set m random(0, 11)
\\set lat random(-50, 60)
\\set lon random(-170, 170)
SELECT id FROM groups WHERE model = :m AND free > 0 AND online ORDER BY geog <-> ST_SetSRID(ST_MakePoint(:lon, :lat), 4326)::geography LIMIT 1;
SQL
chmod a+r "$work"/*.sql

# Runs pgbench and prints "tps p50_us p99_us" from its per-transaction log.
run() {
  local script=$1 clients=$2 name=$3
  rm -f "$work"/pgbench_log.*
  (cd "$work" && pgbench -h "$work" -p "$port" -U postgres -n -f "$script" -c "$clients" -j "$clients" -T "$seconds" -l --log-prefix="$work/pgbench_log" postgres > "$work/$name.out" 2>&1)
  local tps
  tps=$(grep -E '^tps' "$work/$name.out" | head -1 | sed -E 's/tps = ([0-9.]+).*/\1/')
  cat "$work"/pgbench_log.* | awk '{print $3}' | sort -n | awk -v tps="$tps" '{a[NR]=$1} END {printf "%s %d %d\n", tps, a[int(NR*0.5)], a[int(NR*0.99)]}'
}

[ -n "${GPUMESH_POSTGIS_LOAD_ONLY:-}" ] && exit 0
log "simple nearest free group (1 and 2 connections, ${seconds}s each)"
read near1 near1_p50 near1_p99 < <(run "$work/nearest.sql" 1 near1)
read near2 near2_p50 near2_p99 < <(run "$work/nearest.sql" 2 near2)
log "read-only nearest matches (1 and 2 connections, ${seconds}s each)"
read find1 find1_p50 find1_p99 < <(run "$work/find.sql" 1 find1)
read find2 find2_p50 find2_p99 < <(run "$work/find.sql" 2 find2)
log "durable bookings (1 and 2 connections, ${seconds}s each)"
read book1 book1_p50 book1_p99 < <(run "$work/book.sql" 1 book1)
read book2 book2_p50 book2_p99 < <(run "$work/book.sql" 2 book2)
matched=$(psql -At -c "SELECT count(*) FROM (SELECT find(id) f FROM requests WHERE id < 2000) x WHERE f IS NOT NULL")

cat <<JSON
{
  "peer": "postgresql-15 + postgis-3.3",
  "containers": $containers,
  "groups": $(wc -l < "$work/csv/groups.csv"),
  "requests": $requests,
  "matched_of_first_2000": $matched,
  "simple_nearest_per_s_1_connection": $near1,
  "simple_nearest_p50_us_1_connection": $near1_p50,
  "simple_nearest_per_s_2_connections": $near2,
  "find_per_s_1_connection": $find1,
  "find_p50_us_1_connection": $find1_p50,
  "find_p99_us_1_connection": $find1_p99,
  "find_per_s_2_connections": $find2,
  "book_per_s_1_connection": $book1,
  "book_p50_us_1_connection": $book1_p50,
  "book_p99_us_1_connection": $book1_p99,
  "book_per_s_2_connections": $book2,
  "book_p50_us_2_connections": $book2_p50,
  "book_p99_us_2_connections": $book2_p99
}
JSON
