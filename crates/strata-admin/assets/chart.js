// Small SVG charts for the dashboard: a time-series line chart and horizontal bars.
// Everything is built with DOM calls (never innerHTML) because labels come from the network.
"use strict";

const StrataChart = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  // Plot area inside the 600x200 viewBox; the margins hold the axis labels.
  const W = 600, H = 200, LEFT = 56, RIGHT = 10, TOP = 10, BOTTOM = 24;

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // points: [{t: unix ms, v: number|null}]; a null value breaks the line (no reads in that interval).
  // opts: {min, max (fixed bounds, else from data), format(v) for the y labels, empty (text)}.
  function line(svg, points, opts) {
    const o = opts || {};
    svg.replaceChildren();
    const values = points.filter((p) => p.v !== null && Number.isFinite(p.v));
    svg.setAttribute("data-points", String(values.length));
    if (values.length === 0) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, o.empty || "no data yet"));
      return;
    }
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const span = Math.max(t1 - t0, 1);
    let min = o.min !== undefined ? o.min : Math.min(...values.map((p) => p.v));
    let max = o.max !== undefined ? o.max : Math.max(...values.map((p) => p.v));
    if (o.max === undefined) max = niceCeil(max);
    if (max <= min) max = min + 1;
    const x = (t) => LEFT + ((t - t0) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - min) / (max - min)) * (H - TOP - BOTTOM);
    const fmt = o.format || String;

    for (const f of [0, 0.5, 1]) {
      const v = min + f * (max - min);
      svg.appendChild(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: "grid" }));
      svg.appendChild(el("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, fmt(v)));
    }
    svg.appendChild(el("text", { x: LEFT, y: H - 6, class: "axis" }, `-${Math.round(span / 1000)} s`));
    svg.appendChild(el("text", { x: W - RIGHT, y: H - 6, "text-anchor": "end", class: "axis" }, "now"));

    // One path per run of non-null values.
    let d = "", pen = false;
    for (const p of points) {
      if (p.v === null || !Number.isFinite(p.v)) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      pen = true;
    }
    svg.appendChild(el("path", { d, class: "series" }));
    if (values.length === 1) {
      const p = values[0];
      svg.appendChild(el("circle", { cx: x(p.t), cy: y(p.v), r: 3, class: "dot" }));
    }
  }

  // 1, 2, 2.5 or 5 times a power of ten, at least v: round axis maxima.
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // items: [{label, value, max, text, attrs}]; bar width is value/max. attrs go on the row.
  function bars(container, items, empty) {
    container.replaceChildren();
    if (items.length === 0) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = empty || "no data yet";
      container.appendChild(p);
      return;
    }
    for (const item of items) {
      const row = document.createElement("div");
      row.className = "bar-row";
      for (const [k, v] of Object.entries(item.attrs || {})) row.setAttribute(k, String(v));
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = item.label;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill" + (item.warn ? " warn" : "");
      const share = item.max > 0 ? Math.min(item.value / item.max, 1) : 0;
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      track.appendChild(fill);
      const text = document.createElement("span");
      text.className = "bar-text";
      text.textContent = item.text;
      row.append(label, track, text);
      container.appendChild(row);
    }
  }

  return { line, bars, niceCeil };
})();
