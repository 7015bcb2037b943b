// Charts of the last 15 minutes from /v1/pier/history: one request answers
// every series of a kind, and later requests ask only for the points after
// the newest one held (?since), so a page of 200 routes costs one small
// request a second. Drawn as inline SVG.
"use strict";

(function () {
  const pier = window.pier;
  const NS = "http://www.w3.org/2000/svg";
  const el = pier.el;
  // kind -> {tick, points, interval, series: Map name -> {first, points}}
  const held = {};
  let newest = 0;

  // load brings the series of kind up to date.
  async function load(kind) {
    const h = held[kind];
    const q = "/v1/pier/history?kind=" + kind + (h ? "&since=" + h.tick : "");
    let a;
    try {
      a = await pier.get(q);
    } catch (e) {
      if (e.status === 404) return; // an agent without the endpoint: no charts
      throw e;
    }
    const next = { tick: a.Tick, points: a.Points, interval: a.Interval, series: new Map() };
    for (const s of a.Series) {
      const old = h && h.series.get(s.Name);
      let pts = s.Points, first = s.First;
      if (old && old.first + old.points.length === s.First) {
        pts = old.points.concat(s.Points);
        first = old.first;
      }
      const drop = Math.max(0, pts.length - a.Points);
      next.series.set(s.Name, { first: first + drop, points: drop ? pts.slice(drop) : pts });
    }
    held[kind] = next;
    newest = Math.max(newest, a.Tick);
  }

  // Panels per kind: which fields, their classes and words, and units.
  const rate = v => v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2);
  const ms = v => v * 1000 >= 100 ? (v * 1000).toFixed(0) + " ms" : (v * 1000).toFixed(1) + " ms";
  const count = v => String(Math.round(v));
  const PANELS = {
    route: [
      { title: "requests/s", unit: "/s", fmt: rate, lines: [[0, "c2", "2xx"], [1, "c4", "4xx"], [2, "c5", "5xx"]] },
      { title: "latency", fmt: ms, lines: [[3, "p50", "p50"], [4, "p99", "p99"]] },
      { title: "healthy instances", fmt: count, step: true, lines: [[5, "healthy", "healthy"]] },
    ],
    node: [
      { title: "checks", fmt: count, step: true, lines: [[0, "pass", "passing"], [1, "warn", "warning"], [2, "crit", "critical"]] },
    ],
  };
  PANELS.service = PANELS.route;

  const W = 180, H = 40;

  // path draws one field as SVG path data, leaving gaps where it was not
  // measured; x is the point's place in the window, so a young series fills
  // from the right.
  function path(s, field, base, n, max, step) {
    // A point alone (the first of a series, or between gaps) is drawn as a
    // short dash so that it shows.
    let d = "", run = 0;
    s.points.forEach((p, i) => {
      const v = p[field];
      if (v === null || v === undefined) {
        if (run === 1) d += "h1.5";
        run = 0;
        return;
      }
      const x = ((s.first + i - base) * W / (n - 1)).toFixed(1);
      const y = (H - 1 - v * (H - 4) / max).toFixed(1);
      if (run === 0) d += "M" + x + " " + y;
      else d += (step ? "H" + x + "V" + y : "L" + x + " " + y);
      run++;
    });
    if (run === 1) d += "h-1.5";
    return d;
  }

  function panel(kind, s, h, spec) {
    const n = h.points, base = h.tick - n + 1;
    let max = 0, measured = 0;
    const last = {};
    for (const p of s.points) {
      let any = false;
      for (const [f] of spec.lines) {
        if (p[f] !== null) { max = Math.max(max, p[f]); any = true; last[f] = p[f]; }
      }
      if (any) measured++;
    }
    const peak = measured ? spec.fmt(max) : "–";
    if (max <= 0) max = 1;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.dataset.points = String(measured);
    const words = [];
    // Drawn last first, so that the first line (2xx, passing) is on top
    // where several lie at zero.
    for (const [f, cls, word] of [...spec.lines].reverse()) {
      const d = path(s, f, base, n, max, spec.step);
      if (d) {
        const p = document.createElementNS(NS, "path");
        p.setAttribute("class", cls);
        p.setAttribute("d", d);
        svg.append(p);
      }
      words.unshift(word + " " + (last[f] === undefined ? "–" : spec.fmt(last[f])));
    }
    const mins = Math.round(n * h.interval / 60);
    svg.setAttribute("aria-label", spec.title + " over the last " + mins + " minutes, now " + words.join(", ") + "; peak " + peak);
    const legend = el("span", { class: "legend" });
    for (const [f, cls, word] of spec.lines) {
      legend.append(el("span", { class: "key " + cls, text: word + " " + (last[f] === undefined ? "–" : spec.fmt(last[f])) }));
    }
    return el("figure", { class: "chart" },
      el("figcaption", null, el("span", { class: "ctitle", text: spec.title }), legend),
      svg,
      el("div", { class: "axis", "aria-hidden": "true" }, el("span", { text: "−" + mins + " min" }), el("span", { text: "peak " + peak }), el("span", { text: "now" })));
  }

  // draw returns the charts of one series, or a note while there is none.
  function draw(kind, name) {
    const h = held[kind];
    const s = h && h.series.get(name);
    const box = el("div", { class: "charts", "data-chart": kind + ":" + name });
    if (!s) {
      box.append(el("p", { class: "empty", text: h ? "no chart yet" : "charts unavailable" }));
      return box;
    }
    // A service's panel with nothing measured in the window (the traffic
    // of a service no route sends to) is left out; a route keeps all three
    // so that a page of routes lines up.
    const some = spec => kind !== "service" || s.points.some(p => spec.lines.some(([f]) => p[f] !== null));
    for (const spec of PANELS[kind]) if (some(spec)) box.append(panel(kind, s, h, spec));
    if (!box.childElementCount) box.append(el("p", { class: "empty", text: "nothing measured yet" }));
    return box;
  }

  // latest says a route's or service's newest point in words: requests/s,
  // the share of 5xx answers, p50 and p99.
  function latest(kind, name) {
    const h = held[kind];
    const s = h && h.series.get(name);
    const p = s && s.points[s.points.length - 1];
    if (!p || p[0] === null) return "– req/s";
    const n = p[0] + p[1] + p[2];
    return rate(n) + " req/s · " + (n > 0 ? (100 * p[2] / n).toFixed(1) + "%" : "–") + " errors · p50 " +
      (p[3] === null ? "–" : ms(p[3])) + " · p99 " + (p[4] === null ? "–" : ms(p[4])) + " (last " + h.interval + " s)";
  }

  pier.charts = { load, draw, latest, tick: () => newest };
})();
