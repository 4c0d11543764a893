#!/usr/bin/env bash
# Faults between real processes (docs/reliability.md): the indexer and a buyer in the root
# network namespace, a host agent in its own namespace behind a veth pair, so that its
# link can be slowed (tc) and cut. Shows that
#   1. a slowed link (throttled to 128 kbit/s each way with a token bucket; these
#      machines' kernels have no netem for added delay) does not mark a healthy host
#      offline,
#   2. the indexer killed with SIGKILL mid-lease and started again loses nothing: the
#      workload keeps running on its host and the lease completes, and
#   3. a host whose link is cut mid-lease is detected within 3 heartbeat intervals (plus
#      the indexer's 250 ms tick), its lease fails, and its buyer is refunded to the base
#      unit: what the buyer lost equals exactly what was settled before the cut.
# Needs root (ip netns, tc). Prints the measured figures. Usage: scripts/faults/netns.sh [BIN]
set -euo pipefail
bin=$(realpath "${1:-target/debug/gpumesh}")
work=$(mktemp -d)
ns=gm-fault-host
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del gm-fault0 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- indexer log"; tail -20 "$work/indexer.log"; echo "--- host log"; tail -20 "$work/host.log"; exit 1; }
now_ms() { date +%s%3N; }

cleanup
ip netns add "$ns"
ip link add gm-fault0 type veth peer name gm-fault1
ip link set gm-fault1 netns "$ns"
ip addr add 10.77.0.1/24 dev gm-fault0
ip link set gm-fault0 up
ip netns exec "$ns" ip addr add 10.77.0.2/24 dev gm-fault1
ip netns exec "$ns" ip link set gm-fault1 up
ip netns exec "$ns" ip link set lo up

export GPUMESH_INDEXER=http://10.77.0.1:7781
"$bin" indexer --local --listen 10.77.0.1:7781 --data "$work/net" 2>"$work/indexer.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "$GPUMESH_INDEXER/v1/health" >/dev/null && break; sleep 0.1; done
curl -sf "$GPUMESH_INDEXER/v1/health" >/dev/null || fail "the indexer did not start"

export GPUMESH_PASSWORD=netns-test
"$bin" wallet new --kdf light --out "$work/host.key" >/dev/null
"$bin" wallet new --kdf light --out "$work/buyer.key" >/dev/null
"$bin" wallet faucet --key "$work/host.key" --amount 1000 >/dev/null
"$bin" wallet faucet --key "$work/buyer.key" --amount 1000 >/dev/null
host=$("$bin" wallet address --key "$work/host.key")

# The process runtime and a simulated GPU: a local network's stand-ins, labelled as such.
ip netns exec "$ns" "$bin" host --key "$work/host.key" --name ns-host --location 52.37,4.90 \
  --country NL --price 2 --simulate-gpu H100:1 --runtime process --dev \
  --challenge-listen 10.77.0.2:0 >"$work/host.log" 2>&1 &
pids+=($!)

container_state() {
  curl -sf "$GPUMESH_INDEXER/v1/containers" | python3 -c '
import json, sys
for c in json.load(sys.stdin)["items"]:
    if c["host"].lower() == sys.argv[1].lower():
        print(c["state"]); break
' "$host"
}
for _ in $(seq 1 100); do [ "$(container_state)" = standby ] && break; sleep 0.2; done
[ "$(container_state)" = standby ] || fail "the host never came to standby: $(container_state)"

echo "== a slowed link: 128 kbit/s each way for 8 s"
slow="tbf rate 128kbit burst 1600 latency 500ms"
ip netns exec "$ns" tc qdisc add dev gm-fault1 root $slow
tc qdisc add dev gm-fault0 root $slow
for _ in $(seq 1 16); do
  s=$(container_state)
  [ "$s" = offline ] && fail "a slowed host was marked offline"
  sleep 0.5
done
ip netns exec "$ns" tc qdisc del dev gm-fault1 root
tc qdisc del dev gm-fault0 root
echo "slowed link: the host stayed $(container_state)"

lease_field() {
  "$bin" leases --key "$work/buyer.key" --json | python3 -c '
import json, sys
leases = json.load(sys.stdin)
print(leases[-1][sys.argv[1]] if leases else "")' "$1"
}

echo "== the indexer killed (SIGKILL) mid-lease, then started again"
"$bin" run --key "$work/buyer.key" --gpu H100 --near 52.37,4.90 --max-price 3 --max-duration 5m \
  --json -- sh -c 'for i in $(seq 1 15); do echo "tick $i"; sleep 1; done' >"$work/killed.json" 2>"$work/killed.log" &
killed_buyer=$!
pids+=($killed_buyer)
for _ in $(seq 1 100); do [ "$(lease_field state)" = running ] && break; sleep 0.2; done
[ "$(lease_field state)" = running ] || fail "the lease never ran: $(lease_field state)"
killed_lease=$(lease_field id)
sleep 3
kill -9 "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
sleep 2
"$bin" indexer --local --listen 10.77.0.1:7781 --data "$work/net" 2>>"$work/indexer.log" &
pids[0]=$!
for _ in $(seq 1 100); do curl -sf "$GPUMESH_INDEXER/v1/health" >/dev/null && break; sleep 0.1; done
# The workload kept running on its host; the host and the buyer find the indexer again,
# and the lease completes with its whole output.
wait "$killed_buyer" || fail "the buyer's run failed across the restart: $(tail -3 "$work/killed.log")"
"$bin" leases --key "$work/buyer.key" --json >"$work/leases.json"
python3 - "$work/leases.json" "$killed_lease" <<'PY'
import json, sys
lease = next(l for l in json.load(open(sys.argv[1])) if str(l["id"]) == sys.argv[2])
s = lease["settlement"]
assert lease["state"] == "completed" and lease["exit_code"] == 0, lease
assert s["closed"] and int(s["host_share"]) + int(s["treasury_share"]) + int(s["refund"]) == int(s["escrow"]), s
print(f"indexer killed: lease {lease['id']} kept running and completed across the restart, "
      f"{s['gpu_ms']} GPU-ms settled, exact split")
PY

echo "== a cut link mid-lease"
before=$("$bin" balance --key "$work/buyer.key" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["balance"])')
"$bin" run --key "$work/buyer.key" --gpu H100 --near 52.37,4.90 --max-price 3 --max-duration 5m \
  --json -- sleep 300 >"$work/run.json" 2>"$work/run.log" &
buyer=$!
pids+=($buyer)
for _ in $(seq 1 100); do [ "$(lease_field state)" = running ] && break; sleep 0.2; done
[ "$(lease_field state)" = running ] || fail "the lease never ran: $(lease_field state)"
# Let it run and settle usage at least once (every 5 s on a local network).
sleep 7
cut=$(now_ms)
ip netns exec "$ns" ip link set gm-fault1 down
while [ "$(lease_field state)" = running ]; do
  [ $(( $(now_ms) - cut )) -gt 20000 ] && fail "the lost host's lease still runs after 20 s"
  sleep 0.05
done
detected=$(( $(now_ms) - cut ))
state=$(lease_field state)
wait "$buyer" || true
after=$("$bin" balance --key "$work/buyer.key" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["balance"])')
"$bin" leases --key "$work/buyer.key" --json >"$work/leases.json"
python3 - "$work/leases.json" "$before" "$after" "$detected" "$state" <<'PY'
import json, sys
lease = json.load(open(sys.argv[1]))[-1]
before, after, detected, state = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = lease["settlement"]
paid = int(s["host_share"]) + int(s["treasury_share"])
assert state == "failed", state
assert s["closed"], s
assert paid > 0, "usage was settled before the cut"
assert paid + int(s["refund"]) == int(s["escrow"]), s
assert before - after == paid, (before, after, paid)
# 3 heartbeat intervals of 1 s, measured from the cut (the last beat came up to 1 s
# before it), plus the 250 ms tick and this script's 50 ms polling.
assert detected <= 3 * 1000 + 400, detected
print(f"cut link: lease {lease['id']} {state} {detected} ms after the cut; buyer paid {paid} "
      f"base units for settled usage and got {s['refund']} back of {s['escrow']} (exact)")
PY
echo "faults ok"
