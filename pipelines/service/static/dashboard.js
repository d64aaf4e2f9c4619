// AURA fleet dashboard: hand-written, no third-party code, drawn on canvas.
// Polls GET /v1/tenants/{tenant}/dashboard with If-None-Match (304 while nothing changed) and
// redraws when a new version arrives. State for tests and tools: document.body.dataset
// (agents, window, latest, version, implicated) and window.aura; performance marks
// aura-graph-drawn (the first graph on the canvas) and aura-graph-painted (its frame presented).
"use strict";

(() => {
  const POLL_MS = 1500;
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const HEALTH = [[0.2, "#2f9e5b"], [0.5, "#9bbf3a"], [0.8, "#e0a020"], [1.0, "#e0662a"], [Infinity, "#d12f2f"]];
  const UNKNOWN = "#9aa3ad";
  const COLORS = { warning: "#e07b00", alert: "#c62828", intervention: "#1565c0", onset: "#7b1fa2",
                   h0: "#1565c0", h1: "#e07b00", ink: "#1f2937", muted: "#6b7280", grid: "#e5e7eb",
                   ring: "#6a1b9a" };
  const st = { tenant: body.dataset.tenant || new URLSearchParams(location.search).get("tenant") || "",
               etag: null, data: null, drawn: false, timer: 0, seq: 0, px: null, py: null, r: 4 };
  window.aura = st;

  // -- helpers ----------------------------------------------------------------------------------
  const pad2 = (n) => String(n).padStart(2, "0");
  function clock(ms, withDate) {
    const d = new Date(ms);
    const t = `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}:${pad2(d.getUTCSeconds())}`;
    return withDate ? `${d.getUTCFullYear()}-${pad2(d.getUTCMonth() + 1)}-${pad2(d.getUTCDate())} ${t}` : t;
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c);
    return e;
  }
  function fit(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    return [ctx, w, h];
  }
  function bucket(h) {
    if (h < 0) return -1;
    for (let b = 0; b < HEALTH.length; b++) if (h < HEALTH[b][0]) return b;
    return HEALTH.length - 1;
  }
  function band(p, d) {
    let i = 0;
    while (i < d.bands.length && p >= d.bands[i]) i++;
    return d.band_names[i];
  }

  // -- the call graph ---------------------------------------------------------------------------
  function drawGraph(d) {
    const g = d.graph;
    const [ctx, w, h] = fit($("graph"));
    const n = g.agents.length, pad = 14;
    if (!n) {
      ctx.fillStyle = COLORS.muted;
      ctx.fillText("no window yet", pad, pad + 10);
      return;
    }
    const px = new Float32Array(n), py = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      px[i] = pad + g.x[i] * (w - 2 * pad);
      py[i] = pad + g.y[i] * (h - 2 * pad);
    }
    const r = Math.max(2, Math.min(8, Math.sqrt((w * h) / n) * 0.16));
    Object.assign(st, { px, py, r });
    const e = g.edges, m = e.length / 2, fails = new Uint8Array(m);
    for (const k of g.failing_edges) fails[k] = 1;
    for (const failing of [0, 1]) {  // all calls in one path, failing ones over them in red
      ctx.beginPath();
      for (let k = 0; k < m; k++) {
        if (fails[k] !== failing) continue;
        ctx.moveTo(px[e[2 * k]], py[e[2 * k]]);
        ctx.lineTo(px[e[2 * k + 1]], py[e[2 * k + 1]]);
      }
      ctx.lineWidth = failing ? 1.2 : 0.6;  // fainter as calls get many, so agents stay visible
      ctx.strokeStyle = failing ? "rgba(209,47,47,0.6)" : `rgba(90,100,115,${Math.max(0.05, Math.min(0.25, 100 / m))})`;
      ctx.stroke();
    }
    const groups = new Map();
    for (let i = 0; i < n; i++) {
      const b = bucket(g.health[i]);
      if (!groups.has(b)) groups.set(b, []);
      groups.get(b).push(i);
    }
    for (const [b, members] of groups) {  // one fill per colour
      ctx.beginPath();
      for (const i of members) {
        ctx.moveTo(px[i] + r, py[i]);
        ctx.arc(px[i], py[i], r, 0, 2 * Math.PI);
      }
      ctx.fillStyle = b < 0 ? UNKNOWN : HEALTH[b][1];
      ctx.fill();
    }
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = COLORS.ring;
    ctx.fillStyle = COLORS.ring;
    for (const i of g.implicated) {
      ctx.beginPath();
      ctx.arc(px[i], py[i], r + 3.5, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillText(g.agents[i], px[i] + r + 6, py[i] - r - 2);
    }
  }

  function tip(ev) {
    const d = st.data, t = $("tip");
    if (!d || !st.px) return;
    const box = $("graph").getBoundingClientRect();
    const x = ev.clientX - box.left, y = ev.clientY - box.top;
    let best = -1, bestD = (st.r + 4) ** 2;
    for (let i = 0; i < st.px.length; i++) {
      const dd = (st.px[i] - x) ** 2 + (st.py[i] - y) ** 2;
      if (dd < bestD) { best = i; bestD = dd; }
    }
    if (best < 0) { t.hidden = true; return; }
    const g = d.graph, hl = g.health[best];
    t.textContent = `${g.agents[best]}${g.implicated.includes(best) ? "  (implicated)" : ""}\n` +
      (hl < 0 ? "not reporting (seen as a callee only)" :
        `health index ${hl.toFixed(2)} (1: unhealthy) · error rate ${g.error_rate[best]} · p99 ${g.latency_p99_ms[best]} ms`);
    t.style.left = `${Math.min(x + 12, box.width - 260)}px`;
    t.style.top = `${y + 12}px`;
    t.hidden = false;
  }

  // -- the timelines ----------------------------------------------------------------------------
  function axis(d, w) {
    const tl = d.timeline, n = tl.start_ms.length, L = 44, R = 12;
    const t0 = n ? tl.start_ms[0] : 0, t1 = n ? tl.start_ms[n - 1] + (tl.window_ms || 0) : 1;
    const half = (tl.window_ms || 0) / 2;
    const X = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (w - L - R);
    return { X, L, R, t0, t1, half, n };
  }
  function timeTicks(ctx, a, y) {
    ctx.fillStyle = COLORS.muted;
    const k = a.n > 1 ? 5 : 0;
    for (let j = 0; j <= k; j++) {
      const t = a.t0 + ((a.t1 - a.t0) * j) / k;
      ctx.textAlign = k === 0 ? "center" : j === 0 ? "left" : j === k ? "right" : "center";
      ctx.fillText(clock(k ? t : a.t0), k ? a.X(t) : a.X(a.t0 + a.half), y);
    }
    ctx.textAlign = "left";
  }

  function drawTimeline(d) {
    const [ctx, w, h] = fit($("timeline"));
    const tl = d.timeline, a = axis(d, w), T = 30, B = 30;
    const Y = (p) => T + (1 - p) * (h - T - B);
    ctx.fillStyle = "rgba(198,40,40,0.07)";  // the top band
    ctx.fillRect(a.L, T, w - a.L - a.R, Y(d.bands[d.bands.length - 1]) - T);
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.muted;
    ctx.setLineDash([4, 3]);
    ctx.textAlign = "right";
    for (const c of [0, ...d.bands, 1]) {
      ctx.beginPath();
      ctx.moveTo(a.L, Y(c));
      ctx.lineTo(w - a.R, Y(c));
      ctx.stroke();
      ctx.fillText(c.toFixed(1), a.L - 4, Y(c) + 4);
    }
    ctx.setLineDash([]);
    ctx.textAlign = "left";
    timeTicks(ctx, a, h - 4);
    if (!a.n) return;
    for (const o of d.markers.onsets) {  // onsets: dashed lines over the whole plot
      ctx.strokeStyle = COLORS.onset;
      ctx.setLineDash([5, 3]);
      ctx.beginPath();
      ctx.moveTo(a.X(o.at_ms), T - 2);
      ctx.lineTo(a.X(o.at_ms), h - B);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = COLORS.ink;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let on = false;
    for (let i = 0; i < a.n; i++) {
      const p = tl.probability[i];
      if (p === null) { on = false; continue; }
      const x = a.X(tl.start_ms[i] + a.half);
      if (on) ctx.lineTo(x, Y(p)); else ctx.moveTo(x, Y(p));
      on = true;
    }
    ctx.stroke();
    ctx.lineWidth = 1.5;
    const dot = Math.max(1.5, Math.min(3.5, (w - a.L - a.R) / a.n / 3));
    for (let i = 0; i < a.n; i++) {
      const p = tl.probability[i];
      if (p === null) continue;
      const x = a.X(tl.start_ms[i] + a.half);
      ctx.beginPath();
      ctx.arc(x, Y(p), dot, 0, 2 * Math.PI);
      if (tl.committed[i] && tl.status[i] === "ok") {
        ctx.fillStyle = COLORS.ink;
        ctx.fill();
      } else {
        ctx.fillStyle = "#fff";
        ctx.fill();
        ctx.strokeStyle = COLORS.muted;
        ctx.stroke();
      }
    }
    const mark = (list, color, shape, y) => {  // side by side when several share a window
      ctx.fillStyle = color;
      const same = new Map();
      for (const m of list) same.set(m.at_ms, (same.get(m.at_ms) || 0) + 1);
      const seen = new Map();
      for (const m of list) {
        const k = seen.get(m.at_ms) || 0;
        seen.set(m.at_ms, k + 1);
        const x = a.X(m.at_ms + a.half) + (k - (same.get(m.at_ms) - 1) / 2) * 10;
        ctx.beginPath();
        if (shape === "tri") { ctx.moveTo(x, y - 5); ctx.lineTo(x + 5, y + 4); ctx.lineTo(x - 5, y + 4); }
        else if (shape === "dia") { ctx.moveTo(x, y - 6); ctx.lineTo(x + 5, y); ctx.lineTo(x, y + 6); ctx.lineTo(x - 5, y); }
        else ctx.rect(x - 4, y - 4, 8, 8);
        ctx.fill();
      }
    };
    mark(d.markers.warnings, COLORS.warning, "tri", 19);
    mark(d.markers.alerts, COLORS.alert, "dia", 7);
    mark(d.markers.interventions, COLORS.intervention, "sq", h - B + 6);
  }

  function drawBetti(d) {
    const [ctx, w, h] = fit($("betti"));
    const tl = d.timeline, a = axis(d, w), T = 8, B = 22;
    let top = 1;
    for (const v of [...tl.h0, ...tl.h1]) if (v !== null && v > top) top = v;
    const Y = (v) => T + (1 - v / top) * (h - T - B);
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.muted;
    ctx.textAlign = "right";
    for (const v of [0, top]) {
      ctx.beginPath();
      ctx.moveTo(a.L, Y(v));
      ctx.lineTo(w - a.R, Y(v));
      ctx.stroke();
      ctx.fillText(v.toFixed(v % 1 ? 2 : 0), a.L - 4, Y(v) + 4);
    }
    ctx.textAlign = "left";
    timeTicks(ctx, a, h - 4);
    for (const [key, color] of [["h0", COLORS.h0], ["h1", COLORS.h1]]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.6;
      ctx.beginPath();
      let on = false;
      for (let i = 0; i < a.n; i++) {
        const v = tl[key][i];
        if (v === null) { on = false; continue; }
        const x = a.X(tl.start_ms[i] + a.half);
        if (on) ctx.lineTo(x, Y(v)); else ctx.moveTo(x, Y(v));
        on = true;
      }
      ctx.stroke();
      if (a.n < 60) {  // few windows: each one as a dot too
        ctx.fillStyle = color;
        for (let i = 0; i < a.n; i++) {
          if (tl[key][i] === null) continue;
          ctx.beginPath();
          ctx.arc(a.X(tl.start_ms[i] + a.half), Y(tl[key][i]), 2.5, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
    }
  }

  // -- the incident panels ----------------------------------------------------------------------
  function facts(pairs) {
    const dl = el("dl", { class: "facts" });
    for (const [k, v] of pairs) if (v !== null && v !== undefined && v !== "") dl.append(el("dt", {}, k), el("dd", {}, String(v)));
    return dl;
  }
  function renderIncident(d) {
    const box = $("incident"), inc = d.incident;
    if (!inc) {
      box.replaceChildren(el("p", { class: "muted" }, "none open"));
      return;
    }
    const parts = [el("p", {}, el("strong", {}, inc.id), ` · ${inc.status}`)];
    if (inc.steps.length) {
      const at = inc.steps.indexOf(inc.step), ended = inc.step === "__end__";
      const ol = el("ol", { class: "steps", "aria-label": "workflow steps" });
      inc.steps.forEach((s, i) => ol.append(el("li", { class: ended || i < at ? "done" : i === at ? "current" : "" }, s)));
      parts.push(ol);
    } else {
      parts.push(el("p", { class: "note" }, "no incident workflow record (alert only)"));
    }
    parts.push(facts([
      ["step", inc.step], ["opened", inc.opened_ms && clock(inc.opened_ms, true)], ["mechanism", inc.mechanism],
      ["max risk", inc.max_risk !== null ? inc.max_risk.toFixed(3) : null], ["escalation", inc.escalation || null],
      ["implicated", inc.targets.join(", ")], ["actions", inc.actions || null],
      ["awaiting approval", inc.waiting.join("; ")]]));
    if (inc.recent_steps.length) parts.push(el("ul", { class: "trail" }, ...inc.recent_steps.map((s) => el("li", {}, s))));
    box.replaceChildren(...parts);
  }
  function renderPast(d) {
    $("past-note").textContent = d.past.note;
    const items = d.past.incidents.map((p) => el("li", {},
      el("strong", {}, p.id), ` · opened ${p.opened_ms ? clock(p.opened_ms, true) : "?"}`,
      p.outcome ? ` · ${p.outcome}` : ` · ${p.status}`, p.mechanism ? ` · ${p.mechanism}` : "",
      p.max_risk !== null ? ` · max risk ${p.max_risk.toFixed(2)}` : ""));
    $("past").replaceChildren(...items);
    $("past-none").hidden = items.length > 0;
  }

  // -- one render, the poll loop ----------------------------------------------------------------
  function render() {
    const d = st.data, g = d.graph, tl = d.timeline;
    const sel = $("tenant");
    if ([...sel.options].map((o) => o.value).join() !== d.tenants.join()) {
      sel.replaceChildren(...d.tenants.map((t) => el("option", { value: t }, t)));
    }
    sel.value = d.tenant;
    $("window").textContent = g.window_start_ms === null ? "no window yet" :
      `window ${clock(g.window_start_ms, true)}–${clock(g.window_end_ms)} UTC · pane ${g.pane}`;
    $("graph-meta").textContent = `${g.agents.length} agents · ${g.edges.length / 2} call edges`;
    let last = -1;
    for (let i = tl.start_ms.length - 1; i >= 0; i--) if (tl.committed[i]) { last = i; break; }
    const badge = $("risk");
    if (last >= 0) {
      const b = band(tl.probability[last], d);
      badge.textContent = `risk ${tl.probability[last].toFixed(3)} · ${b}${tl.status[last] === "ok" ? "" : ` · ${tl.status[last]}`}`;
      badge.className = `badge ${b}`;
    } else {
      badge.textContent = "no committed verdict";
      badge.className = "badge";
    }
    $("timeline-meta").textContent = `${tl.start_ms.length} windows · ${d.markers.warnings.length} warnings · ` +
      `${d.markers.alerts.length} alerts · ${d.markers.interventions.length} interventions · ${d.markers.onsets.length} onsets`;
    $("onsets-note").textContent = d.markers.onsets_note;
    drawGraph(d);
    if (!st.drawn && g.agents.length) {  // drawn; painted: once the frame holding it is out
      performance.mark("aura-graph-drawn");
      requestAnimationFrame(() => setTimeout(() => performance.mark("aura-graph-painted")));
      st.drawn = true;
    }
    drawTimeline(d);
    drawBetti(d);
    renderIncident(d);
    renderPast(d);
    Object.assign(body.dataset, {
      agents: String(g.agents.length), window: String(g.window_start_ms ?? ""),
      latest: String(tl.start_ms.length ? tl.start_ms[tl.start_ms.length - 1] : ""), version: d.version,
      implicated: g.implicated.map((i) => g.agents[i]).join(","), tenant: d.tenant });
  }

  function setLive(text, cls) {
    const live = $("live");
    live.textContent = text;
    live.className = `live ${cls}`;
  }

  async function poll() {  // one loop: a newer call (a tenant switch) retires the older one
    clearTimeout(st.timer);
    const seq = ++st.seq;
    try {
      if (!st.tenant) {
        const r = await fetch("/dashboard/tenants", { cache: "no-store" });
        const names = (await r.json()).tenants;
        if (!names.length) {
          setLive("waiting for the first window", "");
          return;
        }
        st.tenant = names[0];
      }
      const tenant = st.tenant, headers = st.etag ? { "If-None-Match": st.etag } : {};
      const r = await fetch(`/v1/tenants/${encodeURIComponent(tenant)}/dashboard`, { headers, cache: "no-store" });
      if (seq !== st.seq) return;
      if (r.status === 200) {
        const data = await r.json();
        if (seq !== st.seq) return;
        st.etag = r.headers.get("ETag");
        st.data = data;
        render();
      } else if (r.status !== 304) {
        setLive(`${r.status}: ${(await r.json()).detail || "error"}`, "down");
        return;
      }
      setLive(`live · ${clock(Date.now())}`, "on");
    } catch (err) {
      if (seq === st.seq) setLive(`offline, retrying (${err.message})`, "down");
    } finally {
      if (seq === st.seq) st.timer = setTimeout(poll, POLL_MS);
    }
  }

  $("tenant").addEventListener("change", (ev) => {
    st.tenant = ev.target.value;
    st.etag = null;
    history.replaceState(null, "", `?tenant=${encodeURIComponent(st.tenant)}`);
    poll();
  });
  $("graph").addEventListener("mousemove", tip);
  $("graph").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  window.addEventListener("resize", () => st.data && render());
  poll();
})();
