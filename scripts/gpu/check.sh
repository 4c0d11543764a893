#!/usr/bin/env bash
# Gathers, on a machine with an NVIDIA GPU, what gpumesh needs to know about it
# (docs/capacity-proof.md, "Reference proof rates"): the GPUs nvidia-smi lists, a release
# build of gpumesh, `gpumesh bench proof` on the GPU and on the CPU at the benchmark's and
# the network's proof shape (the CUDA run also reports the GPUs the host agent discovers
# through NVML), and, where podman and CDI specs are present, whether a container given
# GPU 0 by its UUID sees exactly that GPU.
#
# Usage: scripts/gpu/check.sh > result.json
# Needs no network. Every step's failure is recorded, not fatal; the only output on
# standard output is one JSON object, printed at the end. The whole run stays within
# GPUMESH_CHECK_BUDGET_S seconds (450 by default); a step that would start past it is
# recorded as out of time. GPUMESH_CHECK_IMAGE names the local image the container
# check runs (by default the first local image that looks like a glibc distribution).
set -euo pipefail
cd "$(dirname "$0")/../.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
began=$(date +%s)
budget=${GPUMESH_CHECK_BUDGET_S:-450}
bin=target/release/gpumesh
fields=()

# A JSON string of $1: escapes, and control characters other than tab and newline dropped.
json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/}
  s=${s//$'\n'/\\n}
  s=$(printf '%s' "$s" | tr -d '\000-\010\013-\037')
  printf '"%s"' "$s"
}

# Adds "NAME": VALUE (VALUE is JSON already) to the result.
add() {
  fields+=("$(json_str "$1"): $2")
}

# The last BYTES (default 2000) of file $1, as a JSON string.
tail_str() {
  json_str "$(tail -c "${2:-2000}" "$1")"
}

# $1 without leading and trailing spaces.
trim() {
  local v=$1
  v=${v#"${v%%[! ]*}"}
  printf '%s' "${v%"${v##*[! ]}"}"
}

# Whether file $1 holds one JSON value.
is_json() {
  if command -v python3 >/dev/null; then
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$1" 2>/dev/null
  elif command -v jq >/dev/null; then
    jq -e . "$1" >/dev/null 2>&1
  else
    local s
    s=$(tr -d '\n' <"$1")
    [[ $s == \{*\} ]]
  fi
}

# step NAME SECONDS CMD...: runs CMD with a time limit (cut to what the budget has left),
# its output in $work/NAME.out and .err; sets rc (124: timed out) and secs. Never fails.
step() {
  local name=$1 limit=$2 left start
  shift 2
  left=$((budget - ($(date +%s) - began)))
  if ((left < limit)); then
    limit=$left
  fi
  : >"$work/$name.out"
  : >"$work/$name.err"
  secs=0
  if ((limit < 5)); then
    echo "out of time: the script's budget of $budget s is spent" >"$work/$name.err"
    rc=124
    return 0
  fi
  start=$(date +%s)
  rc=0
  timeout --kill-after=10 "$limit" "$@" </dev/null >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  secs=$(($(date +%s) - start))
}

add date "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
add system "$(json_str "$(uname -srm)")"
if commit=$(git rev-parse HEAD 2>/dev/null); then
  add commit "$(json_str "$commit")"
fi

# The GPUs as the driver lists them.
gpu0_uuid=
if command -v nvidia-smi >/dev/null; then
  step nvidia_smi 30 nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version \
    --format=csv,noheader
  if ((rc == 0)); then
    gpus=()
    while IFS=, read -r index uuid name memory driver; do
      index=$(trim "$index") uuid=$(trim "$uuid") name=$(trim "$name")
      memory=$(trim "$memory") driver=$(trim "$driver")
      [[ -n $gpu0_uuid ]] || gpu0_uuid=$uuid
      gpus+=("{\"index\": $(json_str "$index"), \"uuid\": $(json_str "$uuid"), \"name\": $(json_str "$name"), \"memory_total\": $(json_str "$memory"), \"driver_version\": $(json_str "$driver")}")
    done <"$work/nvidia_smi.out"
    add nvidia_smi "[$(IFS=,; echo "${gpus[*]-}")]"
  else
    add nvidia_smi "{\"error\": $(tail_str "$work/nvidia_smi.err"), \"rc\": $rc}"
  fi
else
  add nvidia_smi '{"error": "nvidia-smi not found"}'
fi

# A release build of the gpumesh binary (an existing one is used where cargo is absent).
if command -v cargo >/dev/null; then
  add cargo "$(json_str "$(cargo --version 2>&1)")"
  # No network here: fail fast rather than retry a registry that cannot be reached.
  CARGO_NET_RETRY=0 CARGO_HTTP_TIMEOUT=10 step build 330 cargo build --release -p gpumesh
  add build "{\"ok\": $( ((rc == 0)) && echo true || echo false), \"rc\": $rc, \"seconds\": $secs, \"log_tail\": $(tail_str "$work/build.err")}"
else
  add error '"cargo not found (command -v cargo): gpumesh was not built"'
fi

# Whole-proof rates: the GPU first (what the catalog needs), the CPU for comparison.
benches=(
  "cuda_bench_shape --device cuda"
  "cpu_bench_shape --device cpu"
  "cuda_network_shape --device cuda --rows 65536"
  "cpu_network_shape --device cpu --rows 65536"
)
results=()
for bench in "${benches[@]}"; do
  read -r -a words <<<"$bench"
  name=${words[0]}
  if [[ ! -x $bin ]]; then
    results+=("$(json_str "$name"): {\"error\": \"no $bin to run\"}")
    continue
  fi
  step "$name" 120 "$bin" bench proof --json "${words[@]:1}"
  if ((rc == 0)) && is_json "$work/$name.out"; then
    results+=("$(json_str "$name"): $(cat "$work/$name.out")")
  else
    results+=("$(json_str "$name"): {\"error\": $(tail_str "$work/$name.err"), \"rc\": $rc}")
  fi
done
add bench_proof "{$(IFS=,; echo "${results[*]}")}"

# A container given GPU 0 by UUID through CDI must see that GPU and no other.
container() {
  if ! command -v podman >/dev/null; then
    echo '{"skipped": "podman not found"}'
    return
  fi
  if [[ -z $gpu0_uuid ]]; then
    echo '{"skipped": "nvidia-smi gave no UUID for GPU 0"}'
    return
  fi
  local cdi_list=null specs image seen has_uuid ok
  if command -v nvidia-ctk >/dev/null; then
    step cdi_list 30 nvidia-ctk cdi list
    cdi_list=$(json_str "$(cat "$work/cdi_list.out" "$work/cdi_list.err")")
  fi
  specs=$(find /etc/cdi /var/run/cdi -maxdepth 1 \( -name '*.yaml' -o -name '*.json' \) \
    2>/dev/null | tr '\n' ' ')
  if [[ -z $specs ]] && ! grep -q 'nvidia.com/gpu' "$work/cdi_list.out" 2>/dev/null; then
    echo "{\"skipped\": \"no CDI specs in /etc/cdi or /var/run/cdi (nvidia-ctk cdi generate makes them)\", \"cdi_list\": $cdi_list}"
    return
  fi
  image=${GPUMESH_CHECK_IMAGE:-}
  if [[ -z $image ]]; then
    step images 30 podman images --format '{{.Repository}}:{{.Tag}}'
    image=$(grep -v '<none>' "$work/images.out" |
      grep -E -m1 'cuda|ubuntu|debian|fedora|rocky|alma|centos|ubi|gpumesh' || true)
  fi
  if [[ -z $image ]]; then
    echo "{\"skipped\": \"no local image to run (set GPUMESH_CHECK_IMAGE)\", \"cdi_list\": $cdi_list}"
    return
  fi
  step container 90 podman run --rm --pull=never --security-opt=label=disable \
    --device "nvidia.com/gpu=$gpu0_uuid" "$image" nvidia-smi -L
  seen=$(grep -c '^GPU ' "$work/container.out" || true)
  has_uuid=$(grep -qF "$gpu0_uuid" "$work/container.out" && echo true || echo false)
  ok=$( ((rc == 0 && seen == 1)) && [[ $has_uuid == true ]] && echo true || echo false)
  echo "{\"ok\": $ok, \"rc\": $rc, \"image\": $(json_str "$image"), \"device\": $(json_str "nvidia.com/gpu=$gpu0_uuid"), \"gpus_seen\": $seen, \"uuid_seen\": $has_uuid, \"nvidia_smi_l\": $(tail_str "$work/container.out"), \"stderr_tail\": $(tail_str "$work/container.err"), \"cdi_specs\": $(json_str "$specs"), \"cdi_list\": $cdi_list}"
}
add container "$(container)"
add seconds "$(($(date +%s) - began))"

result="{$(IFS=,; echo "${fields[*]}")}"
if command -v python3 >/dev/null &&
  python3 -c 'import json, sys; print(json.dumps(json.loads(sys.stdin.read()), indent=2))' \
    <<<"$result" 2>/dev/null; then
  :
elif command -v jq >/dev/null && jq . <<<"$result" 2>/dev/null; then
  :
else
  printf '%s\n' "$result"
fi
