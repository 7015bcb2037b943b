// The datacenter switcher: the list comes from /v1/catalog/datacenters
// (this agent's first, then nearest first); with one datacenter it stays
// hidden. The choice lives in the hash (#page/arg?dc=NAME, so that a link
// or a reload keeps it) and in this tab's session storage (so that a plain
// link such as #nodes keeps it too). Requests to the endpoints another
// datacenter answers get ?dc=; this agent's own views (members, routes,
// the charts' history) stay local and say so.
"use strict";

(function () {
  const pier = window.pier;
  const KEY = "pier-dc";
  const box = document.getElementById("dc-label");
  const select = document.getElementById("dc");
  const REFRESH_MS = 15000;
  // The API paths a ?dc= sends to another datacenter's servers (the
  // agent's own list, registry/api/datacenters.go, has more).
  const FEDERATED = ["/v1/catalog/", "/v1/health/", "/v1/kv/", "/v1/session/", "/v1/txn",
    "/v1/operator/raft/", "/v1/operator/autopilot/", "/v1/coordinate/nodes"];
  let local = "";  // this agent's datacenter, once the list answered
  let known = [];
  let chosen = ""; // "" is this agent's own

  function inHash() {
    const m = /\?dc=([^?]*)$/.exec(location.hash);
    if (!m) return null;
    try { return decodeURIComponent(m[1]); } catch (e) { return m[1]; }
  }

  const bare = () => location.hash.replace(/^#/, "").replace(/\?dc=[^?]*$/, "");
  const remote = () => chosen !== "" && chosen !== local ? chosen : "";
  // With several datacenters the hash always names the one shown, this
  // agent's too, so that the browser's back button undoes a switch.
  const named = () => known.length > 1 || remote() !== "";
  const withDC = h => "#" + (named() ? (h || "services") + "?dc=" + encodeURIComponent(remote() || local) : h);

  // sync reads the choice from the hash (or, without one there, from
  // session storage) and writes it back to the hash without a new history
  // entry, so that the address bar names the datacenter shown.
  function sync() {
    const h = inHash();
    chosen = h !== null ? h : sessionStorage.getItem(KEY) || "";
    if (chosen === local) chosen = "";
    if (chosen) sessionStorage.setItem(KEY, chosen);
    else sessionStorage.removeItem(KEY);
    const want = withDC(bare());
    if (location.hash !== want && !(want === "#" && location.hash === "")) history.replaceState(null, "", want);
    // The page links carry it too, for a link opened in another tab.
    for (const a of document.querySelectorAll("nav a[href^='#']")) {
      a.dataset.page = a.dataset.page || a.getAttribute("href").slice(1);
      a.setAttribute("href", withDC(a.dataset.page));
    }
    fill();
  }

  function fill() {
    const names = known.slice();
    if (remote() && !names.includes(remote())) names.push(remote()); // a bookmark of a datacenter gone
    const labels = names.map(n => n === local ? n + " (this agent)" : known.includes(n) ? n : n + " (unknown)");
    const same = select.options.length === names.length && names.every((n, i) => select.options[i].value === n && select.options[i].text === labels[i]);
    if (!same) select.replaceChildren(...names.map((n, i) => pier.el("option", { value: n, text: labels[i] })));
    select.value = remote() || local;
    box.hidden = names.length < 2;
  }

  async function list() {
    try {
      known = await pier.get("/v1/catalog/datacenters");
      local = known[0] || "";
    } catch (e) {
      known = []; // an agent that cannot say: no switcher
    }
    if (chosen === local) chosen = "";
    fill();
  }

  select.addEventListener("change", () => {
    chosen = select.value === local ? "" : select.value;
    if (chosen) sessionStorage.setItem(KEY, chosen);
    else sessionStorage.removeItem(KEY);
    // A node's name is its datacenter's: go to the list of nodes.
    const page = bare().startsWith("node/") ? "nodes" : bare();
    const want = withDC(page);
    if (location.hash === want) pier.show();
    else location.hash = want;
  });

  // path adds ?dc= to a request another datacenter answers, while one is
  // chosen.
  function path(p) {
    const dc = remote();
    if (!dc || p.startsWith("/v1/catalog/datacenters") || !FEDERATED.some(f => p.startsWith(f))) return p;
    return p + (p.includes("?") ? "&" : "?") + "dc=" + encodeURIComponent(dc);
  }

  // localNote is a note that a part of the page is this agent's own,
  // shown while another datacenter is chosen (else null); text may name
  // the datacenters as {local} and {dc}.
  function localNote(text) {
    if (!remote()) return null;
    return pier.el("p", { class: "note", "data-local-only": "", text: text.replace("{local}", local).replace("{dc}", remote()) });
  }

  async function ready() {
    await list();
    setInterval(list, REFRESH_MS);
  }

  pier.dc = { ready, sync, path, remote, local: () => local, localNote };
})();
