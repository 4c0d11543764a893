#!/usr/bin/env bash
# CI: the container image of gpumesh. Builds it from an already built binary with
# packaging/build-image.sh, checks that it starts, and runs the scripted demo in it
# (`gpumesh devnet --demo --json`) under a time limit, failing with the demo's log if the
# demo fails or its summary does not hold. Inside the image no container engine is
# reachable, so the demo's workloads run under the process runtime (local networks only).
#
# Usage: packaging/ci-image.sh [BINARY]   (default: target/release/gpumesh)
# Needs podman, busybox-static and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=${1:-target/release/gpumesh}
tag=localhost/gpumesh:ci
limit=300
name=gpumesh-ci-demo-$$
work=$(mktemp -d)
trap 'podman rm -f -v "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

packaging/build-image.sh "$binary" "$tag"

podman run --rm "$tag" --version
[ "$(podman image inspect --format '{{.Config.User}}' "$tag")" = "10001:10001" ] ||
  { echo "FAIL: the image does not run as the gpumesh user (10001)" >&2; exit 1; }

echo "running gpumesh devnet --demo --json in $tag (limit $limit s)"
start=$SECONDS
status=0
timeout --kill-after=15 "$limit" podman run --rm --name "$name" -e NO_COLOR=1 "$tag" devnet --demo --json \
  >"$work/demo.json" 2>"$work/demo.log" || status=$?
took=$((SECONDS - start))
if [ "$status" -ne 0 ]; then
  echo "FAIL: the demo in the image exited with status $status after $took s (124: over the $limit s limit); its last log lines:" >&2
  tail -n 60 "$work/demo.log" >&2
  exit 1
fi
echo "the demo in the image took $took s"

python3 - "$work/demo.json" <<'PY' || { echo "FAIL: the demo's summary does not hold; its last log lines:" >&2; tail -n 60 "$work/demo.log" >&2; exit 1; }
import json, sys
s = json.load(open(sys.argv[1]))
assert s["runtime"] == "process", s["runtime_note"]
assert s["ledger_ok"] is True, s.get("ledger")
assert s["unmatched"] >= 1 and all(u["reason"] for u in s["unmatched_jobs"]), s["unmatched_jobs"]
assert s["jobs_completed"] == s["jobs_submitted"] - s["unmatched"], s
for r in s["receipts"]:
    assert int(r["host_share"]) + int(r["treasury_share"]) + int(r["refund"]) == int(r["escrow"]), r
    assert r["output"].startswith("hello from lease"), r
assert any("capacity proof" in r["reason"] for r in s["rejected_hosts"]), s["rejected_hosts"]
assert s["offline_detected"] >= 1 and s["banned_checkers"] >= 1, s
assert int(s["checker_rewards"]) > 0, s["checker_rewards"]
assert s["service_reachable"] is True, s
assert s["sessions_served"] >= 20 and s["scale_ups"] >= 1 and s["scale_downs"] >= 1, s
assert s["replicas_replaced"] >= 1, s
print("image demo ok:", s["jobs_completed"], "jobs completed (process runtime),", s["unmatched"], "unmatched;",
      "rejected:", [r["host"] for r in s["rejected_hosts"]], "; service reachable; sessions served",
      s["sessions_served"], "; replicas re-placed", s["replicas_replaced"])
PY
