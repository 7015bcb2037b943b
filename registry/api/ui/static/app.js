// pier's web UI: reads the agent's JSON API every second and redraws the
// current page. Every value from the API goes in as text, never as HTML.
// This file holds the helpers the other files use (window.pier), the
// services, nodes and routes pages, and the loop that polls and redraws;
// charts.js, kv.js, servers.js and token.js add to it before it starts.
"use strict";

(function () {
  const pier = window.pier = {};
  const view = document.getElementById("view");
  const title = document.getElementById("title");
  const filter = document.getElementById("filter");
  const live = document.getElementById("live");
  const errorBox = document.getElementById("error");
  const dcTag = document.getElementById("title-dc");
  const POLL_MS = 1000;
  const MEMBER = { 1: "alive", 2: "leaving", 3: "left", 4: "failed" };
  const RANK = { passing: 0, warning: 1, critical: 2, maintenance: 2 };

  let timer = null;
  let generation = 0; // drops answers for a page the user has left
  let lastKey = "";   // skips redraws when nothing changed

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    for (const kid of kids) {
      if (kid == null) continue;
      e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }

  // status draws a state by colour, by symbol and by word.
  function status(word) {
    return el("span", { class: "status " + word, text: word });
  }

  function worst(list) {
    let w = "passing";
    for (const s of list) if ((RANK[s] || 0) > RANK[w]) w = s;
    return w;
  }

  // headers are the request headers: the token the user gave, if any
  // (token.js keeps it in this tab's session storage).
  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const t = sessionStorage.getItem("pier-token");
    if (t) h["X-Consul-Token"] = t;
    return h;
  }

  // send makes a request and answers {status, ok, text}; a refusal's
  // reason is the body, as the API writes it (403: "Permission denied").
  async function send(method, path, body, extra) {
    if (pier.dc) path = pier.dc.path(path); // the datacenter chosen (dc.js)
    const r = await fetch(path, { method, headers: headers(extra), body, cache: "no-store" });
    return { status: r.status, ok: r.ok, text: await r.text() };
  }

  async function get(path) {
    const r = await send("GET", path);
    if (!r.ok) {
      const err = new Error(path + ": " + r.status + " " + r.text.trim());
      err.status = r.status;
      err.reason = r.text.trim();
      throw err;
    }
    return JSON.parse(r.text);
  }

  function matches(text) {
    const q = filter.value.trim().toLowerCase();
    return q === "" || text.toLowerCase().includes(q);
  }

  function table(headers, rows) {
    const thead = el("thead", null, el("tr", null, ...headers.map(h => el("th", { scope: "col", class: h.num ? "num" : "", text: h.name || h }))));
    const tbody = el("tbody");
    for (const cells of rows) {
      const tr = el("tr");
      cells.forEach((c, i) => {
        const h = headers[i];
        tr.append(el("td", { "data-label": h.name || h, class: h.num ? "num" : "" }, c));
      });
      tbody.append(tr);
    }
    return el("table", null, thead, tbody);
  }

  function tags(list) {
    const s = el("span");
    for (const t of list || []) s.append(el("span", { class: "tag", text: t }));
    return s;
  }

  function meta(m) {
    const keys = Object.keys(m || {}).sort();
    if (keys.length === 0) return "";
    return el("code", { text: keys.map(k => k + "=" + m[k]).join(" ") });
  }

  // ---- services ----
  // Charts are this agent's measurements (/v1/pier/history is local):
  // for another datacenter's services and nodes there are none to show.
  const charted = () => !pier.dc.remote();
  const CHARTS_LOCAL = "Charts are local only: this agent measures {local}, so {dc}'s pages show none.";

  async function services() {
    const [names] = await Promise.all([
      get("/v1/catalog/services").then(m => Object.keys(m).sort()),
      charted() ? pier.charts.load("service") : null,
    ]);
    // One service the agent will not show (ACLs) leaves the others on the page.
    return Promise.all(names.map(n => get("/v1/health/service/" + encodeURIComponent(n))
      .then(list => [n, list], e => [n, [], e.message])));
  }

  function drawServices(all) {
    const out = [];
    for (const [name, list, err] of all) {
      const text = [name];
      for (const e of list) {
        text.push(e.Node.Node, e.Service.ID, e.Service.Address || e.Node.Address, ...(e.Service.Tags || []));
        for (const c of e.Checks) text.push(c.Status, c.Name);
      }
      const state = worst(list.flatMap(e => e.Checks.map(c => c.Status)));
      text.push(state);
      if (!matches(text.join(" "))) continue;
      const rows = list.map(e => {
        const s = e.Service;
        const checks = el("ul", { class: "checks" });
        for (const c of e.Checks) {
          checks.append(el("li", null, status(c.Status), " ", c.Name || c.CheckID,
            c.Output ? el("span", { class: "output", text: c.Output }) : null));
        }
        return [
          s.ID, e.Node.Node, s.Address || e.Node.Address, s.Port || "",
          tags(s.Tags), meta(s.Meta),
          s.Weights ? s.Weights.Passing + "/" + s.Weights.Warning : "",
          checks,
        ];
      });
      const healthy = list.filter(e => e.Checks.every(c => c.Status === "passing")).length;
      out.push(el("section", { class: "card", "data-service": name },
        el("h3", null, name, status(state), el("span", { class: "sub", text: healthy + "/" + list.length + " instances passing" })),
        charted() ? pier.charts.draw("service", name) : null,
        err ? el("p", { class: "error", text: err }) : list.length ? table(["instance", "node", "address", { name: "port", num: true }, "tags", "meta", "weights", "checks"], rows)
          : el("p", { class: "empty", text: "no instances" })));
    }
    if (out.length === 0) out.push(el("p", { class: "empty", text: filter.value ? "No service matches the filter." : "No services." }));
    return [pier.dc.localNote(CHARTS_LOCAL), ...out].filter(Boolean);
  }

  // ---- nodes ----
  async function nodes() {
    const [list, members] = await Promise.all([
      get("/v1/catalog/nodes"),
      // Membership is this agent's LAN pool; another datacenter's nodes
      // are alive or failed by their serfHealth check.
      pier.dc.remote() ? [] : get("/v1/agent/members").catch(() => []),
    ]);
    const details = await Promise.all(list.map(n =>
      Promise.all([
        get("/v1/catalog/node/" + encodeURIComponent(n.Node)).catch(() => null),
        get("/v1/health/node/" + encodeURIComponent(n.Node)).catch(() => []),
      ])));
    return list.map((n, i) => ({ node: n, member: members.find(m => m.Name === n.Node), catalog: details[i][0], checks: details[i][1] }));
  }

  function drawNodes(all) {
    const rows = [];
    for (const d of all) {
      const n = d.node;
      let state = d.member ? (MEMBER[d.member.Status] || "failed") : "";
      const serf = d.checks.find(c => c.CheckID === "serfHealth");
      if (!state) state = serf ? (serf.Status === "passing" ? "alive" : "failed") : "alive";
      const svcs = d.catalog && d.catalog.Services ? Object.values(d.catalog.Services).map(s => s.Service).sort() : [];
      const health = worst(d.checks.map(c => c.Status));
      const text = [n.Node, n.Address, state, health, ...svcs].join(" ");
      if (!matches(text)) continue;
      rows.push([el("a", { href: "#node/" + encodeURIComponent(n.Node), text: n.Node }), status(state), n.Address, status(health), tags([...new Set(svcs)]), n.Datacenter || ""]);
    }
    if (rows.length === 0) return [el("p", { class: "empty", text: filter.value ? "No node matches the filter." : "No nodes." })];
    return [el("section", { class: "card" }, table(["node", "membership", "address", "checks", "services", "datacenter"], rows))];
  }

  // ---- routes ----
  async function routes() {
    try {
      // This agent's front door, whichever datacenter is chosen.
      const [list] = await Promise.all([get("/v1/pier/routes"), pier.charts.load("route")]);
      return list;
    } catch (e) {
      if (e.status === 404 || e.status === 405) return null;
      throw e;
    }
  }

  // With many routes on the page, each one's instances fold away so that
  // the charts of 200 routes stay a page a person can scroll; the folds
  // the user opened stay open across redraws.
  const FOLD_ROUTES = 20;
  const unfolded = new Set();
  function folded(fold, key, summary, body) {
    if (!fold) return body;
    const d = el("details", null, el("summary", { text: summary }), body);
    d.open = unfolded.has(key);
    d.addEventListener("toggle", () => { if (d.open) unfolded.add(key); else unfolded.delete(key); });
    return d;
  }

  // failover says in words where a route with a failover sends now, and
  // where it would go: {nearest: N} and the datacenters it names.
  function failover(r) {
    const f = r.Failover;
    const then = [f.nearest ? "the nearest " + (f.nearest === 1 ? "datacenter" : f.nearest + " datacenters") : "", ...(f.datacenters || [])].filter(Boolean).join(", then ");
    const here = pier.dc.local() || "this datacenter";
    if (r.ServingFrom) return "failed over: serving from " + r.ServingFrom + " (" + here + " has no healthy instance; failover to " + then + ")";
    return "serving from " + here + "; failover to " + then + " when it has no healthy instance";
  }

  function drawRoutes(list) {
    if (list === null) return [el("p", { class: "empty", text: "This agent runs no proxy (start it with -proxy-addr or a proxy: section)." })];
    const out = [pier.dc.localNote("Routes are local only: these are this agent's front door in {local}, whichever datacenter is chosen.")].filter(Boolean);
    for (const r of list) {
      const where = (r.Host || "*") + (r.Path || "");
      const now = pier.charts.latest("route", (r.Host || "") + (r.Path || ""));
      const text = [where, r.Service, r.Source, r.Key || "", ...r.Instances.map(i => i.ID + " " + i.Addr + " " + i.Node)].join(" ");
      if (!matches(text)) continue;
      if (r.Error) {
        out.push(el("section", { class: "card" }, el("h3", null, r.Key, status("error")), el("span", { class: "output", text: r.Error })));
        continue;
      }
      // Failed over, Instances are the other datacenter's and Total
      // this one's.
      const state = r.Instances.length === 0 ? "critical" : r.ServingFrom || r.Instances.length < r.Total ? "warning" : "passing";
      const healthy = r.ServingFrom ? "0/" + r.Total + " healthy here · " + r.Instances.length + " in " + r.ServingFrom : r.Instances.length + "/" + r.Total + " healthy";
      const rows = r.Instances.map(i => [
        i.ID, i.Node, i.Addr, String(i.Weight), String(i.InFlight), String(i.Requests),
        i.DownUntil ? el("span", null, status("ejected"), " until " + new Date(i.DownUntil).toLocaleTimeString()) : status("up"),
      ]);
      out.push(el("section", { class: "card", "data-route": where, "data-serving-from": r.ServingFrom || pier.dc.local() },
        el("h3", null, el("code", { text: where }), el("span", { text: "→ " + r.Service }),
          r.ServingFrom ? el("span", { class: "status failover", text: "serving from " + r.ServingFrom }) : status(state),
          el("span", { class: "sub", text: healthy + " · " + now + " · " + r.Source }),
        ),
        r.Failover ? el("p", { class: "sub failover-note", text: failover(r) }) : null,
        pier.charts.draw("route", r.Host + r.Path),
        rows.length ? folded(list.length > FOLD_ROUTES, where, rows.length + (rows.length === 1 ? " instance" : " instances"),
          table(["instance", "node", "address", { name: "weight", num: true }, { name: "in flight", num: true }, { name: "requests", num: true }, "state"], rows))
          : el("p", { class: "empty", text: "no healthy instance" })));
    }
    return out.length ? out : [el("p", { class: "empty", text: filter.value ? "No route matches the filter." : "No routes." })];
  }

  // ---- a node ----
  async function node(name) {
    const [n, checks] = await Promise.all([
      get("/v1/catalog/node/" + encodeURIComponent(name)),
      get("/v1/health/node/" + encodeURIComponent(name)),
      charted() ? pier.charts.load("node") : null,
    ]);
    return { name, n, checks };
  }

  function drawNode(d) {
    if (!d.n) return [el("p", { class: "empty", text: "No node named " + d.name + "." })];
    const svcs = Object.values(d.n.Services || {}).sort((a, b) => a.ID.localeCompare(b.ID));
    return [
      el("p", null, el("a", { href: "#nodes", text: "← all nodes" })),
      el("section", { class: "card", "data-node": d.name },
        el("h3", null, d.name, status(worst(d.checks.map(c => c.Status))),
          el("span", { class: "sub", text: d.n.Node.Address + " · " + (d.n.Node.Datacenter || "") })),
        charted() ? pier.charts.draw("node", d.name) : pier.dc.localNote(CHARTS_LOCAL),
        d.checks.length ? table(["check", "service", "status", "output"], d.checks.map(c =>
          [c.Name || c.CheckID, c.ServiceName || "", status(c.Status), c.Output ? el("span", { class: "output", text: c.Output }) : ""]))
          : el("p", { class: "empty", text: "no checks" }),
        svcs.length ? table(["service", "instance", { name: "port", num: true }, "tags"], svcs.map(s => [s.Service, s.ID, s.Port || "", tags(s.Tags)])) : null),
    ];
  }

  // Pages: load(arg) fetches, draw(data, arg) returns the nodes to show;
  // poll: false draws once (a form must not be redrawn under the user);
  // local: true shows this agent's own, whichever datacenter is chosen.
  // Other files add pages to pier.pages before start.
  const pages = {
    services: { title: "Services", load: services, draw: drawServices },
    nodes: { title: "Nodes", load: nodes, draw: drawNodes },
    node: { title: "Node", nav: "nodes", load: node, draw: drawNode },
    routes: { title: "Routes", local: true, load: routes, draw: drawRoutes },
  };

  // The hash is #page or #page/arg (a node's name, a KV path), with
  // ?dc=NAME after it while another datacenter is chosen (dc.js).
  function route() {
    const h = location.hash.replace(/^#/, "").replace(/\?dc=[^?]*$/, "");
    const i = h.indexOf("/");
    const name = i < 0 ? h : h.slice(0, i);
    let arg = i < 0 ? "" : h.slice(i + 1);
    try { arg = decodeURIComponent(arg); } catch (e) { /* keep it as typed */ }
    return pages[name] ? { name, arg, p: pages[name] } : { name: "services", arg: "", p: pages.services };
  }

  let data = null;
  function render(force) {
    const { p, arg } = route();
    if (data === null) return;
    const key = JSON.stringify(data) + "\u0000" + filter.value + "\u0000" + pier.charts.tick();
    if (!force && key === lastKey) return;
    lastKey = key;
    view.replaceChildren(...p.draw(data, arg));
  }

  function explain(e) {
    if (e.status === 500 && /No path to datacenter/.test(e.reason || ""))
      return "This agent cannot reach datacenter " + pier.dc.remote() + " now (" + e.reason + "). Choose another datacenter above.";
    if (e.status === 403) return "The token may not read this (" + e.reason + "). Choose another token with the Token button.";
    return "Cannot reach the agent: " + e.message;
  }

  async function tick(gen) {
    const { p, arg } = route();
    try {
      const d = await p.load(arg);
      if (gen !== generation) return;
      data = d;
      errorBox.hidden = true;
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
      render(false);
    } catch (e) {
      if (gen !== generation) return;
      errorBox.textContent = explain(e);
      errorBox.hidden = false;
      live.textContent = e.status ? "refused" : "disconnected";
    }
    if (gen === generation && p.poll !== false) timer = setTimeout(() => tick(gen), POLL_MS);
  }

  function show() {
    pier.dc.sync();
    const { name, p } = route();
    generation++;
    clearTimeout(timer);
    data = null;
    lastKey = "";
    title.textContent = p.title;
    const dc = p.local ? "" : pier.dc.remote();
    document.title = p.title + (dc ? " · " + dc : "") + " · pier";
    dcTag.textContent = dc ? "in " + dc : "";
    for (const n in pages) {
      const a = document.getElementById("nav-" + n);
      if (!a) continue;
      if (n === (p.nav || name)) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    view.replaceChildren(el("p", { class: "empty", text: "Loading…" }));
    tick(generation);
  }

  Object.assign(pier, { el, status, table, tags, get, send, matches, worst, pages, show, explain, view, filter });

  filter.addEventListener("input", () => render(true));
  window.addEventListener("hashchange", () => { show(); document.getElementById("main").focus(); });
  // "/" jumps to the filter box, as on many dashboards; Escape clears it.
  document.addEventListener("keydown", e => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (e.key === "/" && !typing) { e.preventDefault(); filter.focus(); }
    else if (e.key === "Escape" && document.activeElement === filter) { filter.value = ""; render(true); }
  });
  // The other files have added their pages by the time the document is
  // parsed; token.js decides whether to ask for a token first.
  document.addEventListener("DOMContentLoaded", () => (pier.token ? pier.token.ready() : Promise.resolve()).then(() => pier.dc.ready()).then(show));
})();
