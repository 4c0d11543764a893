// The gpumesh dashboard and explorer: a hash router over the indexer's public API.
// Plain ES module, no framework. Every value from the network is escaped before it is
// put in the page: host names and the like come from anyone who signs a request.

const view = document.getElementById("view");
const live = document.getElementById("live");
const STATES = ["standby", "busy", "checking", "awaiting_stake", "offline", "rejected"];
const COLOURS = {
  standby: "#3fb950", busy: "#4fb3ff", checking: "#d29922",
  awaiting_stake: "#8b96a1", offline: "#f85149", rejected: "#a371f7",
};
let timer = null;
let world = null;

const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => (
  { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function api(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${path}: ${response.status}`);
  return body;
}

/** Every item of a paginated listing. */
async function all(path) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=1000${after === null ? "" : `&after=${after}`}`);
    items.push(...page.items);
    if (page.next === null || page.next === undefined) return items;
    after = encodeURIComponent(page.next);
  }
}

/** Base units (18 decimals, a decimal string) as tokens with two decimals. */
function tokens(units) {
  const n = BigInt(units ?? "0");
  const whole = n / 10n ** 18n;
  const cents = (n % 10n ** 18n) / 10n ** 16n;
  return `${whole.toLocaleString("en")}.${cents.toString().padStart(2, "0")}`;
}

const percent = (bps) => `${(bps / 100).toFixed(1)}%`;
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "–");
const short = (address) => `${address.slice(0, 8)}…${address.slice(-6)}`;
const tag = (state) => `<span class="tag ${esc(state)}">${esc(String(state).replace("_", " "))}</span>`;
const link = (hash, text) => `<a href="#${esc(hash)}">${esc(text)}</a>`;
/** Table rows, or one saying there are none. */
const rowsOr = (rows, columns, none = "none yet") =>
  rows || `<tr><td colspan="${columns}" class="muted">${esc(none)}</td></tr>`;

function figure(key, value, shown, label) {
  return `<div class="figure" data-key="${esc(key)}" data-value="${esc(value)}">
    <span class="value">${esc(shown)}</span><span class="label">${esc(label)}</span></div>`;
}

/** A host's state for the map: the first of offline, rejected, busy, checking, awaiting
 * stake that any of its containers is in; standby otherwise. */
function hostState(containers) {
  for (const s of ["offline", "rejected", "busy", "checking", "awaiting_stake", "standby"]) {
    if (containers.some((c) => c.state === s)) return s;
  }
  return "standby";
}

function project(lon, lat, width, height) {
  return [((lon + 180) / 360) * width, ((90 - lat) / 180) * height];
}

async function mapSvg(containers) {
  if (!world) world = await api("/assets/countries-110m.json");
  const width = 960;
  const height = 480;
  const land = topojson.feature(world, world.objects.countries);
  let paths = "";
  for (const feature of land.features) {
    const g = feature.geometry;
    if (!g) continue;
    const polygons = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
    let d = "";
    for (const polygon of polygons) {
      for (const ring of polygon) {
        // A ring that crosses the antimeridian starts a new stroke there rather than
        // drawing a line across the whole map.
        d += ring.map(([lon, lat], i) => {
          const [x, y] = project(lon, lat, width, height);
          const jump = i > 0 && Math.abs(lon - ring[i - 1][0]) > 180;
          return `${i && !jump ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
        }).join("") + "Z";
      }
    }
    paths += `<path class="land" d="${d}"></path>`;
  }
  const hosts = new Map();
  for (const c of containers) {
    if (!hosts.has(c.host)) hosts.set(c.host, []);
    hosts.get(c.host).push(c);
  }
  let dots = "";
  for (const [address, list] of hosts) {
    const state = hostState(list);
    const [x, y] = project(list[0].location.lon, list[0].location.lat, width, height);
    const title = `${list[0].host_name} (${list[0].location.country}): ${list.length} GPUs, ${state}`;
    dots += `<a href="#/host/${esc(address)}"><circle class="host" data-host="${esc(address)}"
      data-state="${esc(state)}" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${4 + Math.min(list.length, 8)}"
      fill="${COLOURS[state] || "#fff"}"><title>${esc(title)}</title></circle></a>`;
  }
  const legend = STATES.map((s) => `<span><i class="dot ${s}"></i>${s.replace("_", " ")}</span>`).join("");
  return `<svg id="map" viewBox="0 0 ${width} ${height}" role="img" aria-label="hosts on a world map">
    ${paths}${dots}</svg><div class="legend">${legend}</div>`;
}

function chart(samples, value, label) {
  if (samples.length < 2) {
    return `<p class="muted">${esc(label)}: collecting (one sample a minute)…</p>`;
  }
  const values = samples.map(value);
  const top = Math.max(...values, 1);
  const width = 400;
  const height = 100;
  const points = values.map((v, i) =>
    `${((i / (values.length - 1)) * width).toFixed(1)},${(height - (v / top) * height).toFixed(1)}`).join(" ");
  return `<p class="muted">${esc(label)} (peak ${esc(top.toLocaleString("en"))})</p>
    <svg class="chart" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none"><polyline points="${points}"></polyline></svg>`;
}

async function overview() {
  const [stats, containers, blocks, checkers] = await Promise.all([
    api("/v1/stats"), all("/v1/containers"), api("/v1/ledger/blocks?limit=8"), api("/v1/checkers"),
  ]);
  const checkerRows = checkers.map((c) => `<tr><td>${link(`/account/${c.address}`, short(c.address))}</td>
    <td>${esc(c.credited)}</td><td>${esc(percent(c.agreement_bps))}</td>
    <td>${esc(c.canaries_passed)}/${esc(c.canaries_failed)}</td>
    <td>${c.banned_until_ms ? '<span class="tag offline">banned</span>' : '<span class="tag standby">active</span>'}</td></tr>`).join("");
  const dayAverage = stats.history.length
    ? Math.round(stats.history.reduce((a, s) => a + s.utilization_bps, 0) / stats.history.length)
    : stats.utilization_bps;
  const hours = stats.delivered_gpu_ms / 3_600_000;
  const byState = STATES.filter((s) => stats.containers_by_state[s])
    .map((s) => `<tr><td>${tag(s)}</td><td data-state-count="${esc(s)}">${esc(stats.containers_by_state[s])}</td></tr>`).join("");
  const byModel = Object.entries(stats.gpus_by_model)
    .map(([m, n]) => `<tr><td>${esc(m)}</td><td data-model-count="${esc(m)}">${esc(n)}</td></tr>`).join("");
  const txs = stats.history.map((s, i, h) => (i ? s.transactions - h[i - 1].transactions : 0)).slice(1);
  const rows = blocks.map((b) => `<tr><td>${link(`/block/${b.height}`, b.height)}</td><td>${esc(b.tx_count)}</td>
    <td>${esc(time(b.time_ms))}</td><td class="mono">${esc(short(b.state_root))}</td></tr>`).join("");
  view.innerHTML = `<h1>The network</h1>
    <div class="figures" id="headline">
      ${figure("hosts", stats.hosts, `${stats.hosts_online} / ${stats.hosts}`, "hosts online")}
      ${figure("containers", stats.containers, stats.containers, "GPUs (containers)")}
      ${figure("countries", stats.countries, stats.countries, "countries")}
      ${figure("utilization_bps", stats.utilization_bps, percent(stats.utilization_bps), "utilization now")}
      ${figure("utilization_day_bps", dayAverage, percent(dayAverage), "utilization, last day")}
      ${figure("delivered_gpu_ms", stats.delivered_gpu_ms, hours.toFixed(2), "GPU-hours delivered")}
      ${figure("rewards_distributed", stats.rewards_distributed, tokens(stats.rewards_distributed), "rewards distributed")}
      ${figure("transactions", stats.transactions, stats.transactions.toLocaleString("en"), "settlement transactions")}
      ${figure("treasury_balance", stats.treasury_balance, tokens(stats.treasury_balance), "treasury")}
      ${figure("annualized_fee_revenue", stats.annualized_fee_revenue, tokens(stats.annualized_fee_revenue), "annualized fee revenue")}
      ${figure("leases_live", stats.leases_live, stats.leases_live, "live leases")}
      ${figure("checkers", stats.checkers, stats.checkers, "checkers")}
    </div>
    <h2>Hosts</h2><div class="panel">${await mapSvg(containers)}</div>
    <div class="cols">
      <div><h2>Containers by state</h2><div class="panel"><table>${byState}</table></div></div>
      <div><h2>GPUs by model</h2><div class="panel"><table>${byModel}</table></div></div>
    </div>
    <div class="cols">
      <div><h2>Utilization</h2><div class="panel">${chart(stats.history, (s) => s.utilization_bps / 100, "utilization, %")}</div></div>
      <div><h2>Transactions</h2><div class="panel">${chart(txs.map((t) => ({ t })), (s) => s.t, "transactions a minute")}</div></div>
    </div>
    <h2>Latest blocks</h2><div class="panel"><table>
      <tr><th>height</th><th>transactions</th><th>time</th><th>state root</th></tr>${rowsOr(rows, 4)}</table></div>
    <h2>Checkers</h2><div class="panel"><table>
      <tr><th>checker</th><th>credited tasks</th><th>agreement</th><th>canaries passed/failed</th><th>standing</th></tr>
      ${rowsOr(checkerRows, 5, "this network has no checkers")}</table></div>`;
  live.textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function host(address, after) {
  const cursor = after ? `&after=${after}` : "";
  const [containers, leases, account] = await Promise.all([
    all("/v1/containers"), api(`/v1/leases?host=${address}&limit=50${cursor}`), api(`/v1/accounts/${address}`),
  ]);
  const mine = containers.filter((c) => c.host.toLowerCase() === address.toLowerCase());
  if (!mine.length) return accountPage(address);
  const first = mine[0];
  const gpus = mine.map((c) => `<tr><td>${esc(c.index)}</td><td>${esc(c.gpu)}${c.simulated ? " <span class=muted>(simulated)</span>" : ""}</td>
    <td>${tag(c.state)}</td><td>${esc(c.tier)}</td><td>${esc(tokens(c.price_per_gpu_hour))}</td><td>${esc(c.rejected ?? "")}</td></tr>`).join("");
  const rows = leases.items.map((l) => `<tr><td>${link(`/lease/${l.id}`, l.id)}</td><td>${tag(l.state)}</td>
    <td>${esc(l.gpu_count)}×${esc(l.gpu)}</td><td>${esc(time(l.created_ms))}</td>
    <td>${esc(l.settlement ? tokens(l.settlement.host_share) : "–")}</td></tr>`).join("");
  view.innerHTML = `<h1 data-page="host">Host ${esc(first.host_name)}</h1>
    <div class="panel"><dl><dt>address</dt><dd class="mono">${esc(address)}</dd>
      <dt>where</dt><dd>${esc(first.location.country)} (${esc(first.location.lat)}, ${esc(first.location.lon)})</dd>
      <dt>balance</dt><dd>${esc(tokens(account.balance))}</dd>
      <dt>rewards, all time</dt><dd>${esc(tokens(account.cumulative_rewards))}</dd></dl></div>
    <h2>GPUs</h2><div class="panel"><table><tr><th>GPU</th><th>model</th><th>state</th><th>tier</th><th>price / GPU-hour</th><th>rejected</th></tr>${gpus}</table></div>
    <h2>Leases</h2><div class="panel"><table><tr><th>lease</th><th>state</th><th>GPUs</th><th>created</th><th>host's share</th></tr>${rowsOr(rows, 5)}</table></div>
    <p>${leases.next === null ? "" : link(`/host/${address}/${leases.next}`, "more leases →")}</p>`;
}

async function lease(id) {
  const l = await api(`/v1/leases/${id}`);
  const s = l.settlement;
  const receipt = s ? `<dl><dt>escrow</dt><dd>${esc(tokens(s.escrow))}</dd><dt>charged</dt><dd>${esc(tokens(s.charged))}</dd>
    <dt>host</dt><dd>${esc(tokens(s.host_share))}</dd><dt>treasury</dt><dd>${esc(tokens(s.treasury_share))}</dd>
    <dt>refund</dt><dd>${esc(tokens(s.refund))}</dd>
    <dt>start in the ledger</dt><dd>${esc(time(s.started_ms))}</dd>
    <dt>GPU time billed</dt><dd>${esc((s.gpu_ms / 1000).toFixed(1))} s</dd>
    <dt>at most billable</dt><dd>${s.bound_gpu_ms == null ? "–" : esc((s.bound_gpu_ms / 1000).toFixed(1)) +  " s (GPUs × (end − start + slack))"}</dd>
    <dt>closed</dt><dd>${esc(s.closed)}</dd></dl>` : `<p class="muted">not funded</p>`;
  view.innerHTML = `<h1 data-page="lease">Lease ${esc(l.id)} ${tag(l.state)}</h1>
    <div class="cols"><div class="panel"><dl>
      <dt>buyer</dt><dd>${link(`/account/${l.buyer}`, l.buyer)}</dd>
      <dt>host</dt><dd>${link(`/host/${l.host}`, l.host_name)}</dd>
      <dt>GPUs</dt><dd>${esc(l.gpu_count)}× ${esc(l.gpu)}${l.simulated ? " (simulated)" : ""}</dd>
      <dt>image</dt><dd class="mono">${esc(l.image)}</dd>
      <dt>created</dt><dd>${esc(time(l.created_ms))}</dd><dt>started</dt><dd>${esc(time(l.started_ms))}</dd>
      <dt>ended</dt><dd>${esc(time(l.ended_ms))}</dd><dt>exit code</dt><dd>${esc(l.exit_code ?? "–")}</dd>
      <dt>note</dt><dd>${esc(l.failure ?? "")}</dd></dl></div>
    <div class="panel"><h2>Receipt</h2>${receipt}</div></div>
    <p class="muted">The workload's output is visible to its buyer and host only (signed requests).</p>`;
}

async function block(height) {
  const headers = await api(`/v1/ledger/blocks?below=${Number(height) + 1}&limit=1`);
  const b = headers.find((h) => h.height === Number(height));
  if (!b) throw new Error(`no block ${height} yet`);
  const seqs = Array.from({ length: Math.min(b.tx_count, 50) }, (_, i) => b.first_seq + i);
  const txs = await Promise.all(seqs.map((seq) => api(`/v1/ledger/txs/${seq}`)));
  const rows = txs.map(({ entry }) => `<tr><td>${link(`/tx/${entry.seq}`, entry.seq)}</td>
    <td>${esc(entry.tx.tx.kind.type)}</td>
    <td>${link(`/account/${entry.tx.tx.from}`, short(entry.tx.tx.from))}</td></tr>`).join("");
  view.innerHTML = `<h1 data-page="block">Block ${esc(b.height)}</h1>
    <div class="panel"><dl><dt>time</dt><dd>${esc(time(b.time_ms))}</dd><dt>transactions</dt><dd>${esc(b.tx_count)} from #${esc(b.first_seq)}</dd>
      <dt>parent</dt><dd class="mono">${esc(b.prev_hash)}</dd><dt>transactions root</dt><dd class="mono">${esc(b.tx_root)}</dd>
      <dt>state root</dt><dd class="mono">${esc(b.state_root)}</dd><dt>reward root</dt><dd class="mono">${esc(b.reward_root)}</dd></dl></div>
    <h2>Transactions${b.tx_count > 50 ? " (first 50)" : ""}</h2><div class="panel"><table>
      <tr><th>seq</th><th>kind</th><th>from</th></tr>${rows}</table></div>
    <p>${b.height > 1 ? link(`/block/${b.height - 1}`, "← previous block") : ""}</p>`;
}

async function tx(seq) {
  const { hash, entry } = await api(`/v1/ledger/txs/${seq}`);
  view.innerHTML = `<h1 data-page="tx">Transaction ${esc(entry.seq)}</h1>
    <div class="panel"><dl><dt>hash</dt><dd class="mono">${esc(hash)}</dd><dt>time</dt><dd>${esc(time(entry.time_ms))}</dd>
      <dt>from</dt><dd>${link(`/account/${entry.tx.tx.from}`, entry.tx.tx.from)}</dd><dt>nonce</dt><dd>${esc(entry.tx.tx.nonce)}</dd></dl></div>
    <h2>Contents</h2><div class="panel"><pre class="mono">${esc(JSON.stringify(entry.tx.tx.kind, null, 2))}</pre></div>`;
}

async function accountPage(address) {
  const [account, history] = await Promise.all([
    api(`/v1/accounts/${address}`), api(`/v1/accounts/${address}/history?limit=25`),
  ]);
  const stakes = (account.stakes ?? []).map((s) => `<tr><td>${esc(s.index)}</td><td>${esc(tokens(s.bonded))}</td>
    <td>${esc(tokens(s.unbonding))}</td></tr>`).join("");
  const rows = history.map((e) => `<tr><td>${link(`/tx/${e.seq}`, e.seq)}</td><td>${esc(time(e.time_ms))}</td>
    <td>${esc(e.tx.tx.kind.type)}</td></tr>`).join("");
  view.innerHTML = `<h1 data-page="account">Account <span class="mono">${esc(address)}</span></h1>
    <div class="panel"><dl><dt>balance</dt><dd>${esc(tokens(account.balance))}</dd>
      <dt>vesting</dt><dd>${esc(tokens(account.vesting))}</dd>
      <dt>rewards, all time</dt><dd>${esc(tokens(account.cumulative_rewards))}</dd><dt>nonce</dt><dd>${esc(account.nonce)}</dd></dl></div>
    <h2>Stakes</h2><div class="panel"><table><tr><th>GPU</th><th>bonded</th><th>unbonding</th></tr>${rowsOr(stakes, 3)}</table></div>
    <h2>History (latest 25)</h2><div class="panel"><table><tr><th>seq</th><th>time</th><th>kind</th></tr>${rowsOr(rows, 3)}</table></div>`;
}

/** Where a search goes: an address, a block height, "lease N" or "tx N". */
function destination(query) {
  const q = query.trim();
  if (/^0x[0-9a-fA-F]{40}$/.test(q)) return `/host/${q}`;
  if (/^\d+$/.test(q)) return `/block/${q}`;
  const m = /^(lease|tx|block)\s*#?\s*(\d+)$/i.exec(q);
  if (m) return `/${m[1].toLowerCase()}/${m[2]}`;
  return null;
}

document.getElementById("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = document.getElementById("q").value;
  const to = destination(q);
  if (to) location.hash = to;
  else view.innerHTML = `<h1>Nothing to search</h1><p class="muted">Give a 0x address, a block height,
    "lease 12" or "tx 34"; "${esc(q)}" is none of these.</p>`;
});

/** What each page takes from the address: anything else is not looked up at all, so a
 * crafted link cannot add parameters or path segments to the API requests. */
const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
const NUMBER = /^\d+$/;
const ARGUMENTS = { host: ADDRESS, account: ADDRESS, lease: NUMBER, block: NUMBER, tx: NUMBER };

async function route() {
  clearInterval(timer);
  const [, page, arg, more] = location.hash.replace(/^#/, "").split("/");
  const pages = { host, lease, block, tx, account: accountPage };
  try {
    if (pages[page] && arg && !(ARGUMENTS[page].test(arg) && (more === undefined || NUMBER.test(more)))) {
      view.innerHTML = `<h1>Not found</h1><p class="muted">"${esc(arg)}" is not a ${esc(page)} this explorer can show.</p>`;
    } else if (pages[page] && arg) {
      live.textContent = "";
      await pages[page](arg, more);
    } else {
      await overview();
      timer = setInterval(() => overview().catch(() => { live.textContent = "the indexer is not answering"; }), 3000);
    }
  } catch (error) {
    view.innerHTML = `<h1>Not found</h1><p class="muted">${esc(error.message)}</p>`;
  }
}

window.addEventListener("hashchange", route);
route();
