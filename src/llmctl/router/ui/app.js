// The dashboard of `llmctl serve`. Plain script, no build step: it reads /ui/api/state every few
// seconds, follows /ui/api/log as server-sent events, and loads or unloads through the same
// endpoints as the CLI (/models/switch, /models/stop). The API key lives in sessionStorage only.
"use strict";

const KEY = "llmctl.key";
const THEME = "llmctl.theme";
const POLL_MS = 2000;
const MAX_LOG = 5000;

const $ = (id) => document.getElementById(id);
let state = null;
let pollTimer = null;
let hovered = null; // a profile shown as "would go here" on the device bars
const busy = new Map(); // profile -> progress message of a load started from this page
let logAbort = null;
let logLines = [];

// --- small helpers ---------------------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(node.style, v); // CSSOM: allowed by the page's CSP
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
}

function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// llama.cpp's log prefix: time and level ("0.00.048.196 E ")
function stripPrefix(line) { return line.replace(/^\d+\.\d+\.\d+\.\d+ [A-Z] +/, ""); }

function key() { return sessionStorage.getItem(KEY) || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (key()) h["Authorization"] = "Bearer " + key();
  return h;
}

class Unauthorized extends Error {}

async function api(path, opts) {
  const res = await fetch(path, Object.assign({}, opts, { headers: headers((opts || {}).headers) }));
  if (res.status === 401) throw new Unauthorized("The key was refused.");
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!res.ok) {
    const msg = body && body.error ? body.error.message : `HTTP ${res.status}`;
    throw new Error(msg);
  }
  return body;
}

function notice(text) { $("notice").textContent = text || ""; }

// --- login -------------------------------------------------------------------------------------

function askKey(message) {
  stopAll();
  $("main").hidden = true;
  $("login-error").textContent = message || "";
  const dlg = $("login");
  if (!dlg.open) dlg.showModal();
  $("key").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const value = $("key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  try {
    await refresh();
  } catch (err) {
    if (err instanceof Unauthorized) {
      sessionStorage.removeItem(KEY);
      $("login-error").textContent = "The key was refused. Check it and try again.";
      $("key").select();
      return;
    }
    throw err;
  }
  $("login").close();
  start();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  askKey("");
}

// --- theme -------------------------------------------------------------------------------------

function applyTheme(name) {
  const root = document.documentElement;
  if (name === "auto") root.removeAttribute("data-theme");
  else root.setAttribute("data-theme", name);
  $("theme").textContent = "Theme: " + name;
  $("theme").setAttribute("aria-label", "Colour theme: " + name + " (change)");
}

function cycleTheme() {
  const order = ["auto", "light", "dark"];
  const next = order[(order.indexOf(localStorage.getItem(THEME) || "auto") + 1) % order.length];
  localStorage.setItem(THEME, next);
  applyTheme(next);
}

// --- state -------------------------------------------------------------------------------------

async function refresh() {
  state = await api("/ui/api/state");
  render();
  return state;
}

function start() {
  $("main").hidden = false;
  $("signout").hidden = !(state && state.auth);
  schedule();
  followLog();
}

function stopAll() {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = null;
  if (logAbort) logAbort.abort();
  logAbort = null;
}

function schedule() {
  if (pollTimer) clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    try {
      if (!document.hidden) await refresh();
      notice(busy.size ? $("notice").textContent : "");
    } catch (err) {
      if (err instanceof Unauthorized) { askKey("The key is no longer accepted."); return; }
      notice("Cannot reach the router: " + err.message);
    }
    schedule();
  }, POLL_MS);
}

function render() {
  if (!state) return;
  document.body.dataset.ready = "1";
  renderSummary();
  renderDevices();
  renderProfiles();
  renderRequests();
  renderUpstreams();
  renderServers();
}

function renderSummary() {
  const running = state.servers.filter((s) => s.profile);
  const q = state.queue;
  const parts = [];
  parts.push(running.length ? running.map((s) => s.name === s.profile ? s.profile : `${s.name}: ${s.profile}`).join(", ") : "no model loaded");
  if (q.loading) parts.push(`loading ${q.loading}`);
  parts.push(`queue ${q.depth}/${q.max_size}`);
  parts.push(`in flight ${q.inflight}`);
  $("summary").textContent = parts.join(" · ");
  const order = [];
  if (q.max_wait_s > 0) {
    order.push(`swap-aware order: up to ${secs(q.max_wait_s)} passed over`);
    order.push(`${q.loads_avoided} load${q.loads_avoided === 1 ? "" : "s"} avoided`);
    order.push(`${secs(q.passed_over_s)} passed over in all`);
  }
  const swaps = Object.entries(q.swaps || {}).map(([why, n]) => `${n} × ${why}`);
  if (swaps.length) order.push(`swaps: ${swaps.join(", ")}`);
  $("queue").textContent = [`queue depth ${q.depth} of ${q.max_size} · in flight ${q.inflight}`, ...order].join(" · ");
}

// --- devices -----------------------------------------------------------------------------------

const KINDS = ["weights", "kv", "compute", "overhead"];
const KIND_NAMES = { weights: "weights", kv: "KV cache", compute: "compute", overhead: "overhead" };

function pct(n, total) { return total > 0 ? Math.max(0, (100 * n) / total) : 0; }

function renderDevices() {
  const box = $("devices");
  box.replaceChildren();
  const ghost = hovered ? state.profiles.find((p) => p.name === hovered) : null;
  for (const d of state.devices) {
    const total = d.total_bytes;
    const bar = el("div", { class: "bar", "data-device": d.id });
    const words = [];
    for (const share of d.shares) {
      for (const k of KINDS) {
        const n = share.planned[k];
        if (!n) continue;
        bar.append(el("div", {
          class: `seg k-${k}`, "data-profile": share.profile, "data-kind": k,
          style: { width: `${pct(n, total)}%` }, title: `${share.profile}: ${KIND_NAMES[k]} ${bytes(n)}`,
        }));
      }
      const parts = KINDS.filter((k) => share.planned[k]).map((k) => `${KIND_NAMES[k]} ${bytes(share.planned[k])}`);
      let w = `${share.profile}: planned ${bytes(share.planned_bytes)} (${parts.join(", ")})`;
      if (share.reported_bytes !== null && share.reported_bytes !== undefined) {
        w += `, reported ${bytes(share.reported_bytes)}`;
        bar.append(el("div", {
          class: "reported", style: { left: `${Math.min(99.5, pct(share.reported_bytes, total))}%` },
          title: `${share.profile}: reported use ${bytes(share.reported_bytes)}`,
        }));
      }
      words.push(w);
    }
    if (d.other_bytes) {
      bar.append(el("div", { class: "seg k-other", style: { width: `${pct(d.other_bytes, total)}%` },
        title: `other programs ${bytes(d.other_bytes)}` }));
    }
    let ghostNote = null;
    if (ghost && ghost.state !== "ready" && ghost.plan && ghost.plan[d.id]) {
      const planned = Object.values(ghost.plan[d.id]).reduce((a, b) => a + b, 0);
      // evicting the loaded profile gives its share back
      const freed = d.shares.filter((s) => ghost.evicts.includes(s.profile))
        .reduce((a, s) => a + Math.max(s.planned_bytes, s.reported_bytes || 0), 0);
      const room = d.free_bytes + freed;
      const fits = planned <= room;
      bar.append(el("div", { class: "seg k-ghost", "data-ghost": ghost.name,
        style: { width: `${pct(planned, total)}%` }, title: `${ghost.name} would take ${bytes(planned)}` }));
      let t = `${ghost.name} would take ${bytes(planned)} here`;
      if (ghost.evicts.length) t += `, stopping ${ghost.evicts.join(", ")}`;
      t += fits ? ` — fits (${bytes(room - planned)} left)` : ` — does not fit (${bytes(planned - room)} short)`;
      ghostNote = el("div", { class: "ghost-note", text: t });
    }
    if (d.headroom_bytes) {
      bar.append(el("div", { class: "seg k-headroom", style: { width: `${pct(d.headroom_bytes, total)}%` },
        title: `headroom ${bytes(d.headroom_bytes)}` }));
    }
    const summary = `${d.name}: ${bytes(total)} (${d.source}); ${words.length ? words.join("; ") : "nothing loaded"}; free ${bytes(d.free_bytes)}${d.headroom_bytes ? `; headroom ${bytes(d.headroom_bytes)}` : ""}`;
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", summary);
    box.append(el("div", { class: "device" },
      el("div", { class: "head" },
        el("span", { class: "name", text: `${d.name} · ${bytes(total)}` }),
        el("span", { class: "detail", text: `free ${bytes(d.free_bytes)}${d.headroom_bytes ? ` · headroom ${bytes(d.headroom_bytes)}` : ""}` })),
      bar,
      el("div", { class: "detail", text: words.length ? words.join("; ") : "nothing loaded" }),
      ghostNote));
  }
  if (!state.devices.length) box.append(el("p", { class: "muted", text: "No device is known." }));
}

// --- profiles ----------------------------------------------------------------------------------

function renderProfiles() {
  const box = $("profiles");
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.focusId : null;
  box.replaceChildren();
  // one server at a time (a server named "managed"): loading another profile switches
  const active = state.servers.some((s) => s.name === "managed" && s.profile);
  for (const p of state.profiles) {
    const shown = busy.has(p.name) && p.state !== "ready" && p.state !== "failed" ? "loading" : p.state;
    const est = p.estimate;
    const card = el("article", {
      class: "card", "data-profile": p.name, "data-state": shown, tabindex: "-1",
      "aria-labelledby": `p-${p.name}`,
      onmouseenter: () => setHover(p.name), onmouseleave: () => setHover(null),
      onfocusin: () => setHover(p.name), onfocusout: () => setHover(null),
    });
    const badge = el("span", { class: `state ${shown}`, "data-role": "state", text: shown });
    // a server that runs an old launch of its profile (the manifest changed since it started)
    const stale = p.stale ? el("span", { class: "state stale", "data-role": "stale", text: "stale",
      title: `${p.stale_why || "runs an old launch"}; it restarts with the new flags` }) : null;
    card.append(el("h3", { id: `p-${p.name}` }, p.name,
      stale ? el("span", { class: "badges" }, stale, badge) : badge));
    if (p.description) card.append(el("p", { class: "muted", text: p.description }));
    const dl = el("dl");
    const row = (k, v) => dl.append(el("dt", { text: k }), el("dd", {}, v));
    if (p.aliases.length) row("aliases", p.aliases.map((a) => el("span", { class: "chip", text: a })));
    const ctx = est ? est.n_ctx : p.ctx_size;
    const slots = est ? est.n_seq : p.parallel > 0 ? p.parallel : "auto";
    row("context", `${ctx} tokens, ${slots} slot${slots === 1 ? "" : "s"}`);
    row("cache", `K ${p.cache_type_k}, V ${p.cache_type_v}`);
    if (est) {
      const over = est.overhead_bytes ? `, overhead ${bytes(est.overhead_bytes)}` : "";
      row("estimate", `${bytes(est.total_bytes)} (weights ${bytes(est.weights_bytes)}, KV ${bytes(est.kv_bytes)}, compute ${bytes(est.compute_bytes)}${over})${est.fits === false ? " — over the GPU budget" : ""}`);
      if (est.engine_bytes != null) row("engine plan", bytes(est.engine_bytes));
    } else if (p.estimate_error) {
      row("estimate", "unknown: " + p.estimate_error);
    }
    if (p.memory_source) row("memory from", el("span", { "data-role": "memory-source", text: p.memory_source }));
    if (p.state === "ready") {
      row("in flight", String(p.inflight));
      row("idle", secs(p.idle_s));
    }
    if (p.waiting) row("waiting", `${p.waiting} request${p.waiting === 1 ? "" : "s"}`);
    if (p.ttl_s) row("unload after", secs(p.ttl_s) + " idle");
    card.append(dl);

    const progress = busy.get(p.name) || (p.state === "loading" && p.load ? p.load.message : null);
    if (shown === "loading") {
      const load = p.state === "loading" ? p.load : null;
      const step = load && load.step ? `${load.step} · ` : "";
      const t = load ? ` · ${secs(load.elapsed_s)}` : "";
      const bar = el("progress", { max: "100", "aria-label": `loading ${p.name}` });
      if (load && load.progress) bar.value = Math.round(load.progress * 100);
      card.append(bar, el("p", { class: "progress", "data-role": "progress",
        text: step + stripPrefix(progress || "loading…") + t }));
    }
    if (p.state === "failed" && p.load) {
      const tail = p.load.tail || [];
      const first = tail.length ? tail[0] : p.load.error;
      card.append(el("div", { class: "errbox", role: "alert", "data-role": "error" },
        el("div", { class: "line", text: first ? stripPrefix(first) : "the load failed" }),
        tail.length ? el("details", {}, el("summary", { text: "why" }),
          el("p", { text: p.load.error || "" }),
          el("pre", { text: tail.join("\n") })) : null));
    }
    const actions = el("div", { class: "actions" });
    const loadingNow = shown === "loading";
    if (p.state !== "ready") {
      const label = active ? "Switch to" : "Load";
      actions.append(el("button", {
        type: "button", class: "primary", "data-action": "load", "data-focus-id": `load-${p.name}`,
        disabled: loadingNow, "aria-label": `${label} ${p.name}`, onclick: () => load(p.name),
      }, label));
    } else {
      actions.append(el("button", {
        type: "button", class: "danger", "data-action": "unload", "data-focus-id": `unload-${p.name}`,
        "aria-label": `Unload ${p.name}`, onclick: () => unload(p.name),
      }, "Unload"));
    }
    card.append(actions);
    box.append(card);
  }
  if (focused) {
    const again = box.querySelector(`[data-focus-id="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

function setHover(name) {
  if (hovered === name) return;
  hovered = name;
  renderDevices();
}

async function load(name) {
  busy.set(name, "starting…");
  notice(`Loading ${name}…`);
  renderProfiles();
  let failed = null;
  try {
    const res = await fetch("/models/switch", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ profile: name }),
    });
    if (res.status === 401) throw new Unauthorized("The key was refused.");
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      throw new Error(body && body.error ? body.error.message : `HTTP ${res.status}`);
    }
    await readEvents(res, (event, data) => {
      let obj = null;
      try { obj = JSON.parse(data); } catch (_) { return; }
      if (event === "error") failed = obj.error ? obj.error.message : "the load failed";
      else if (event !== "done" && obj.message) {
        busy.set(name, obj.message);
        const prog = document.querySelector(`.card[data-profile="${CSS.escape(name)}"] [data-role="progress"]`);
        if (prog) prog.textContent = stripPrefix(obj.message);
      }
    });
  } catch (err) {
    if (err instanceof Unauthorized) { busy.delete(name); askKey("The key is no longer accepted."); return; }
    failed = err.message;
  }
  busy.delete(name);
  // the router's message names the profile already ("Loading NAME failed: ...")
  if (failed) notice(failed.includes(name) ? failed : `Loading ${name} failed: ${failed}`);
  else notice(`${name} is ready.`);
  await refresh().catch(() => {});
}

async function unload(name) {
  notice(`Unloading ${name}…`);
  try {
    await api("/models/stop", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ profile: name }),
    });
    notice(`${name} was unloaded.`);
  } catch (err) {
    if (err instanceof Unauthorized) { askKey("The key is no longer accepted."); return; }
    notice(`Unloading ${name} failed: ${err.message}`);
  }
  await refresh().catch(() => {});
}

// --- requests, upstreams, servers -------------------------------------------------------------

function renderRequests() {
  const body = $("requests").tBodies[0];
  body.replaceChildren();
  for (const r of state.requests) {
    const tokens = r.prompt_tokens === null && r.completion_tokens === null ? "–"
      : `${r.prompt_tokens ?? "?"} → ${r.completion_tokens ?? "?"}`;
    body.append(el("tr", {},
      el("td", { text: new Date(r.at * 1000).toLocaleTimeString() }),
      el("td", { text: r.profile || "–" }),
      el("td", { text: r.upstream || "–" }),
      el("td", { class: r.status >= 400 ? "bad" : null, text: String(r.status) }),
      el("td", { text: secs(r.duration_s) }),
      el("td", { text: tokens }),
      el("td", { text: r.tokens_per_second == null ? "–" : r.tokens_per_second.toFixed(1) }),
      el("td", { class: "mono", text: `${r.method} ${r.path}` })));
  }
  if (!state.requests.length) {
    body.append(el("tr", {}, el("td", { colspan: "8", class: "muted", text: "No request yet." })));
  }
}

function renderUpstreams() {
  const body = $("upstreams").tBodies[0];
  body.replaceChildren();
  for (const u of state.upstreams) {
    const b = u.breaker;
    let detail = u.url || "the managed llama-server";
    if (b.state !== "closed") detail += ` · retry in ${secs(b.retry_in_s)}`;
    if (b.last_error) detail += ` · last error: ${b.last_error}`;
    body.append(el("tr", {},
      el("td", { text: u.name }),
      el("td", { text: u.type }),
      el("td", { class: b.state === "closed" ? null : "bad", text: `${b.state} (${b.opens} opens)` }),
      el("td", { text: detail })));
  }
}

function renderServers() {
  const sel = $("log-server");
  const names = state.servers.map((s) => s.name);
  const have = Array.from(sel.options).map((o) => o.value);
  if (names.join("\n") !== have.join("\n")) {
    const keep = sel.value;
    sel.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(keep)) sel.value = keep;
  }
}

// --- log ---------------------------------------------------------------------------------------

async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

async function followLog() {
  if (logAbort) logAbort.abort();
  const ctl = new AbortController();
  logAbort = ctl;
  const server = $("log-server").value || "managed";
  logLines = [];
  $("log").replaceChildren();
  while (!ctl.signal.aborted) {
    try {
      const res = await fetch(`/ui/api/log?server=${encodeURIComponent(server)}&lines=300`, {
        headers: headers({ Accept: "text/event-stream" }), signal: ctl.signal,
      });
      if (res.status === 401) { askKey("The key is no longer accepted."); return; }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      await readEvents(res, (event, data) => {
        if (event === "file") {
          $("log-file").textContent = JSON.parse(data).path;
          addLog(["── " + JSON.parse(data).path]);
        } else if (event === "lines") {
          addLog(JSON.parse(data));
        }
      });
    } catch (err) {
      if (ctl.signal.aborted) return;
    }
    // the router restarted or the stream ended: try again shortly
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function lineNode(text, q) {
  const m = /^\d+\.\d+\.\d+\.\d+ ([EW]) /.exec(text);
  const node = el("div", { class: m ? m[1] : null });
  if (!q) { node.textContent = text; return node; }
  const lower = text.toLowerCase();
  let at = 0;
  let i;
  while ((i = lower.indexOf(q, at)) >= 0) {
    node.append(text.slice(at, i), el("mark", { text: text.slice(i, i + q.length) }));
    at = i + q.length;
  }
  node.append(text.slice(at));
  return node;
}

function addLog(lines) {
  const box = $("log");
  const q = $("log-search").value.trim().toLowerCase();
  logLines.push(...lines);
  if (logLines.length > MAX_LOG) {
    logLines = logLines.slice(-MAX_LOG);
    redrawLog();
    return;
  }
  const frag = document.createDocumentFragment();
  for (const line of lines) if (!q || line.toLowerCase().includes(q)) frag.append(lineNode(line, q));
  box.append(frag);
  if ($("log-follow").checked) box.scrollTop = box.scrollHeight;
}

function redrawLog() {
  const box = $("log");
  const q = $("log-search").value.trim().toLowerCase();
  box.replaceChildren(...logLines.filter((l) => !q || l.toLowerCase().includes(q)).map((l) => lineNode(l, q)));
  if ($("log-follow").checked) box.scrollTop = box.scrollHeight;
}

// --- start -------------------------------------------------------------------------------------

async function boot() {
  applyTheme(localStorage.getItem(THEME) || "auto");
  $("theme").addEventListener("click", cycleTheme);
  $("signout").addEventListener("click", signOut);
  $("login-form").addEventListener("submit", signIn);
  $("login").addEventListener("cancel", (ev) => ev.preventDefault());
  $("log-search").addEventListener("input", redrawLog);
  $("log-server").addEventListener("change", followLog);
  try {
    // ask for a key before the first data request, rather than after a refusal
    const hello = await api("/ui/api/hello");
    if (hello.auth && !key()) { askKey(""); return; }
    await refresh();
    start();
  } catch (err) {
    if (err instanceof Unauthorized) askKey(key() ? "The key was refused." : "");
    else { $("main").hidden = false; notice("Cannot reach the router: " + err.message); schedule(); }
  }
}

boot();
