// The Strata dashboard: polls the admin server's JSON API (/healthz, /api/*) every REFRESH_MS and
// redraws. When a fetch fails the page says so and keeps showing the last data it received.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  // A hung server must not freeze the page: abort and count it as unreachable.
  const FETCH_TIMEOUT_MS = 5000;
  const AUDIT_LIMIT = 50;

  const $ = (id) => document.getElementById(id);

  // ---- formatting ----
  function bytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }
  const int = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–");
  const pct = (v) => (v === null || !Number.isFinite(v) ? "–" : `${(v * 100).toFixed(1)} %`);
  const clock = (ms) => new Date(ms).toISOString().slice(11, 19);

  function cell(tr, text, attrs) {
    const td = document.createElement("td");
    td.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, String(v));
    tr.appendChild(td);
    return td;
  }

  // ---- fetching ----
  // Resolves to {ok, status, body}; rejects only when the server cannot be reached at all.
  async function getJson(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch(path, { cache: "no-store", signal: ctl.signal });
      let body = null;
      try { body = await res.json(); } catch (_) { body = null; }
      return { ok: res.ok, status: res.status, body };
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- sections ----
  function renderHealth(r) {
    const badge = $("health");
    const h = r.body || {};
    const status = h.status || (r.ok ? "ok" : "degraded");
    badge.dataset.status = status;
    const nodes = Number.isFinite(h.nodes_total) ? ` · ${h.nodes_up}/${h.nodes_total} nodes up` : "";
    const state = h.cluster_state ? ` · cluster ${h.cluster_state}` : "";
    badge.textContent = `${status === "ok" ? "healthy" : status}${nodes}${state}`;
  }

  function slotText(slots) {
    if (!Array.isArray(slots) || slots.length === 0) return "";
    const count = slots.reduce((n, [a, b]) => n + (b - a + 1), 0);
    return `${slots.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ")} (${count})`;
  }

  // Masters ordered by their first slot, each followed by its replicas; replicas whose master is
  // not in the list (e.g. during a failover) come last.
  function orderNodes(nodes) {
    const first = (n) => (Array.isArray(n.slots) && n.slots.length ? n.slots[0][0] : Infinity);
    const masters = nodes.filter((n) => n.role === "master").sort((a, b) => first(a) - first(b) || a.addr.localeCompare(b.addr));
    const out = [];
    const placed = new Set();
    for (const m of masters) {
      out.push(m); placed.add(m);
      for (const r of nodes) if (r.role !== "master" && r.master_id && r.master_id === m.id) { out.push(r); placed.add(r); }
    }
    for (const n of nodes) if (!placed.has(n)) out.push(n);
    return out;
  }

  function renderTopology(topo) {
    const nodes = Array.isArray(topo.nodes) ? topo.nodes : [];
    const masters = nodes.filter((n) => n.role === "master");
    const up = nodes.filter((n) => n.up).length;
    const summary = $("topology-summary");
    summary.dataset.nodes = nodes.length;
    summary.dataset.masters = masters.length;
    summary.dataset.up = up;
    const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
    summary.textContent = `${topo.mode || "?"} · ${count(nodes.length, "node")} · ${count(masters.length, "master")} · ${up} up` +
      (topo.cluster_state ? ` · cluster_state ${topo.cluster_state}` : "");
    $("mode").textContent = topo.mode || "";

    const tbody = $("topology").tBodies[0];
    tbody.replaceChildren();
    for (const n of orderNodes(nodes)) {
      const tr = document.createElement("tr");
      tr.className = `${n.role} ${n.up ? "up" : "down"}`;
      tr.dataset.nodeAddr = n.addr;
      tr.dataset.role = n.role;
      tr.dataset.up = String(Boolean(n.up));
      if (n.master_id) tr.dataset.masterId = n.master_id;
      cell(tr, n.role === "master" ? n.addr : `└ ${n.addr}`, { class: "addr" });
      cell(tr, n.role, { "data-field": "role" });
      // A node that did not answer carries the error: shown on hover.
      cell(tr, n.up ? "up" : "down", { "data-field": "state", class: n.up ? "ok" : "bad", title: n.error || "" });
      cell(tr, n.role === "master" ? slotText(n.slots) : "", { "data-field": "slots" });
      cell(tr, int(n.keys), { class: "num", "data-field": "keys", "data-value": n.keys });
      cell(tr, int(n.ops_per_sec), { class: "num" });
      cell(tr, int(n.connected_clients), { class: "num" });
      // A standalone server has no node id (the API repeats its address): show none.
      const id = n.id && n.id !== n.addr ? n.id : "";
      cell(tr, id.slice(0, 8), { class: "muted mono", title: id });
      tbody.appendChild(tr);
    }

    // Memory bars: against maxmemory when set, else against the largest node (relative only).
    const largest = Math.max(1, ...nodes.map((n) => n.memory_used_bytes || 0));
    StrataChart.bars($("memory"), orderNodes(nodes).map((n) => {
      const used = n.memory_used_bytes || 0, limit = n.maxmemory_bytes || 0;
      return {
        label: `${n.addr} ${n.role === "master" ? "M" : "R"}`,
        value: used,
        max: limit > 0 ? limit : largest,
        warn: limit > 0 && used / limit > 0.8,
        text: limit > 0 ? `${bytes(used)} / ${bytes(limit)} (${pct(used / limit)})` : `${bytes(used)} (no maxmemory)`,
        attrs: { "data-node-addr": n.addr, "data-used": used, "data-max": limit },
      };
    }), "no nodes");
  }

  function renderHistory(hist) {
    const samples = Array.isArray(hist.samples) ? hist.samples : [];
    const hit = samples.map((s) => ({ t: s.t_unix_ms, v: s.hit_ratio === undefined ? null : s.hit_ratio }));
    const ops = samples.map((s) => ({ t: s.t_unix_ms, v: Number.isFinite(s.ops_per_sec) ? s.ops_per_sec : null }));
    StrataChart.line($("chart-hit-ratio"), hit, { min: 0, max: 1, format: (v) => `${Math.round(v * 100)} %`, empty: "no reads yet" });
    StrataChart.line($("chart-ops"), ops, { min: 0, format: (v) => int(v) });
    const last = samples[samples.length - 1];
    // The newest interval may have had no reads (null): show the latest measured ratio.
    const measured = hit.filter((p) => p.v !== null);
    $("hit-ratio-now").textContent = measured.length ? pct(measured[measured.length - 1].v) : "";
    $("ops-now").textContent = last ? `${int(last.ops_per_sec)} ops/s` : "";
  }

  function renderNamespaces(ns) {
    const list = (Array.isArray(ns.namespaces) ? ns.namespaces : []).slice().sort((a, b) => b.keys - a.keys || a.namespace.localeCompare(b.namespace));
    const total = list.reduce((n, x) => n + (x.keys || 0), 0);
    const summary = $("namespaces-summary");
    summary.dataset.scannedKeys = ns.scanned_keys;
    summary.textContent = `${int(ns.scanned_keys)} keys scanned`;

    const tbody = $("namespaces").tBodies[0];
    tbody.replaceChildren();
    for (const x of list) {
      const tr = document.createElement("tr");
      tr.dataset.namespace = x.namespace;
      cell(tr, x.namespace, { class: "mono", "data-field": "namespace" });
      cell(tr, int(x.keys), { class: "num", "data-field": "keys", "data-value": x.keys });
      cell(tr, bytes(x.memory_bytes), { class: "num", "data-field": "memory_bytes", "data-value": x.memory_bytes });
      cell(tr, int(x.no_ttl_keys), { class: "num", "data-field": "no_ttl_keys", "data-value": x.no_ttl_keys });
      const share = cell(tr, "", { class: "share" });
      const bar = document.createElement("span");
      bar.className = "bar-fill";
      bar.style.width = `${total > 0 ? ((x.keys / total) * 100).toFixed(1) : 0}%`;
      share.appendChild(bar);
      tbody.appendChild(tr);
    }
    if (list.length === 0) {
      const tr = document.createElement("tr");
      cell(tr, "no keys", { colspan: 5, class: "empty" });
      tbody.appendChild(tr);
    }

    const hist = Array.isArray(ns.ttl_histogram) ? ns.ttl_histogram : [];
    const most = Math.max(1, ...hist.map((b) => b.count || 0));
    StrataChart.bars($("ttl-histogram"), hist.map((b) => ({
      label: b.bucket, value: b.count || 0, max: most, text: int(b.count),
      attrs: { "data-bucket": b.bucket, "data-count": b.count },
    })), "no keys");
  }

  // Events are audit.rs JSON lines (time, principal, action, target, result, reason); other
  // sources may name fields differently, so fall back to the closest ones.
  function renderAudit(a) {
    const events = Array.isArray(a.events) ? a.events : [];
    const tbody = $("audit").tBodies[0];
    tbody.replaceChildren();
    for (const e of events) {
      const tr = document.createElement("tr");
      const result = e.result || "";
      tr.dataset.action = e.action || "";
      tr.dataset.result = result;
      cell(tr, String(e.time || e.timestamp || ""), { class: "mono" });
      cell(tr, String(e.principal || e.username || ""));
      cell(tr, String(e.action || e.reason || ""));
      cell(tr, String(e.target || e.object || ""), { class: "mono" });
      cell(tr, result + (e.reason && e.action ? `: ${e.reason}` : ""), { class: result === "error" ? "bad" : "" });
      tbody.appendChild(tr);
    }
    if (events.length === 0) {
      const tr = document.createElement("tr");
      cell(tr, "no audit events (start strata serve with --audit-log PATH)", { colspan: 5, class: "empty" });
      tbody.appendChild(tr);
    }
  }

  // ---- the loop ----
  const sections = [
    ["/healthz", renderHealth, true],
    ["/api/topology", renderTopology, false],
    ["/api/history", renderHistory, false],
    ["/api/namespaces", renderNamespaces, false],
    [`/api/audit?limit=${AUDIT_LIMIT}`, renderAudit, false],
  ];
  let unreachableSince = null;

  async function refresh() {
    const results = await Promise.allSettled(sections.map(([path]) => getJson(path)));
    let reached = 0;
    results.forEach((r, i) => {
      const [path, render, anyStatus] = sections[i];
      if (r.status !== "fulfilled") return;
      reached += 1;
      // /healthz answers 503 with a body when degraded: that is data, not an error.
      if ((r.value.ok || anyStatus) && r.value.body) {
        try { render(anyStatus ? r.value : r.value.body); } catch (err) { console.error(path, err); }
      }
    });
    const conn = $("conn");
    if (reached === 0) {
      if (unreachableSince === null) unreachableSince = Date.now();
      document.body.dataset.state = "unreachable";
      $("unreachable").hidden = false;
      $("unreachable-since").textContent = `since ${clock(unreachableSince)} UTC`;
      $("health").dataset.status = "unreachable";
      $("health").textContent = "unreachable";
      conn.dataset.state = "unreachable";
      conn.textContent = "unreachable";
    } else {
      unreachableSince = null;
      document.body.dataset.state = "live";
      $("unreachable").hidden = true;
      conn.dataset.state = "live";
      conn.textContent = `updated ${clock(Date.now())} UTC`;
    }
  }

  async function loop() {
    await refresh();
    setTimeout(loop, REFRESH_MS);
  }
  loop();
})();
