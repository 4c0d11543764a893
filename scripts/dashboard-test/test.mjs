// Drives the dashboard in headless Chromium (Debian's, through playwright-core) against a
// running network: the headline figures shown equal the API's, the map shows every host,
// searching an address and a block height opens their pages, and the page logs no console
// errors. Saves screenshots and prints the page's weight and load time as JSON.
//
//   GPUMESH_URL=http://127.0.0.1:7700 node test.mjs [screenshot dir]

import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const base = process.env.GPUMESH_URL;
if (!base) throw new Error("set GPUMESH_URL to the indexer's address");
const shots = process.argv[2] ?? "screenshots";
mkdirSync(shots, { recursive: true });

const api = async (path) => {
  const response = await fetch(`${base}${path}`);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
};
const check = (ok, message) => {
  if (!ok) throw new Error(message);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  const requested = [];
  page.on("request", (r) => requested.push(r.url()));

  // Figures that only grow are bracketed by a read before the page loads and one after
  // the page was read.
  const first = await api("/v1/stats");
  const began = Date.now();
  await page.goto(`${base}/`, { waitUntil: "load" });
  await page.waitForSelector("#headline .figure");
  await page.waitForSelector("#map circle.host");
  const loadMs = Date.now() - began;
  const weight = await page.evaluate(() => {
    const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
    return entries.reduce((sum, e) => sum + (e.transferSize || e.encodedBodySize || 0), 0);
  });

  // The headline figures equal the API's (the ones that move are read between two reads).
  const shown = Object.fromEntries(await page.$$eval("#headline .figure",
    (figures) => figures.map((f) => [f.dataset.key, f.dataset.value])));
  const after = await api("/v1/stats");
  for (const key of ["hosts", "containers", "countries", "checkers"]) {
    check(String(after[key]) === shown[key], `${key}: page ${shown[key]}, API ${after[key]}`);
  }
  for (const key of ["transactions", "delivered_gpu_ms", "treasury_balance", "rewards_distributed"]) {
    const value = BigInt(shown[key]);
    check(BigInt(first[key]) <= value && value <= BigInt(after[key]),
      `${key}: page ${value}, API ${first[key]}..${after[key]}`);
  }

  // The map shows every host.
  const containers = [];
  for (let after = null; ;) {
    const page = await api(`/v1/containers?limit=1000${after === null ? "" : `&after=${after}`}`);
    containers.push(...page.items);
    if (page.next === null) break;
    after = page.next;
  }
  const hosts = [...new Set(containers.map((c) => c.host.toLowerCase()))].sort();
  const dots = (await page.$$eval("#map circle.host", (c) => c.map((d) => d.dataset.host.toLowerCase()))).sort();
  check(JSON.stringify(dots) === JSON.stringify(hosts), `map shows ${dots.length} hosts, the API lists ${hosts.length}`);
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  // Searching a host's address, an account's address and a block height opens their pages.
  const search = async (text, pageKind, expected) => {
    await page.fill("#q", text);
    await page.press("#q", "Enter");
    const heading = await page.waitForSelector(`h1[data-page="${pageKind}"]`, { timeout: 10_000 });
    const title = await heading.textContent();
    check(title.includes(expected), `search ${text}: heading ${title}`);
  };
  await search(hosts[0], "host", containers.find((c) => c.host.toLowerCase() === hosts[0]).host_name);
  await page.screenshot({ path: `${shots}/host.png`, fullPage: true });
  const info = await api("/v1/info");
  await search(info.treasury, "account", info.treasury);
  await page.screenshot({ path: `${shots}/account.png`, fullPage: true });
  const head = await api("/v1/ledger/head");
  check(head.height >= 1, "the network has sealed a block");
  await search(String(head.height), "block", `Block ${head.height}`);
  await page.screenshot({ path: `${shots}/block.png`, fullPage: true });

  // Everything came from the indexer itself, and nothing failed.
  const elsewhere = requested.filter((u) => !u.startsWith(base) && !u.startsWith("data:"));
  check(elsewhere.length === 0, `requests elsewhere: ${elsewhere.join(", ")}`);
  check(errors.length === 0, `console errors: ${errors.join(" | ")}`);
  console.log(JSON.stringify({
    ok: true, load_ms: loadMs, page_weight_bytes: weight, hosts: hosts.length,
    screenshots: ["overview.png", "host.png", "account.png", "block.png"].map((f) => `${shots}/${f}`),
  }));
} catch (error) {
  failures.push(error);
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`dashboard test failed: ${failures[0].message}`);
  process.exit(1);
}
