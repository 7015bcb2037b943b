// The servers page: the Raft peers and which one leads (with each one's
// last contact and index, from autopilot's view), and the sessions with
// the locks they hold.
"use strict";

(function () {
  const pier = window.pier;
  const el = pier.el;

  async function load() {
    const soft = (p, empty) => pier.get(p).catch(e => ({ error: e }));
    const [conf, health, sessions, kv] = await Promise.all([
      soft("/v1/operator/raft/configuration"),
      soft("/v1/operator/autopilot/health"),
      soft("/v1/session/list"),
      // Consul has no list of locks: a lock is a key whose Session is set.
      // Only keys are needed, but ?keys drops the Session field.
      pier.send("GET", "/v1/kv/?recurse").then(r => r.status === 404 ? [] : r.ok ? JSON.parse(r.text) : { error: { status: r.status, reason: r.text.trim(), message: r.text.trim() } }),
    ]);
    return { conf, health, sessions, locks: kv.error ? kv : kv.filter(e => e.Session).map(e => ({ Key: e.Key, Session: e.Session, LockIndex: e.LockIndex })) };
  }

  function problem(what, x) {
    const e = x.error;
    return el("p", { class: "error", text: what + ": " + (e.status === 403 ? "the token may not read this (" + e.reason + ")" : e.message) });
  }

  function draw(d) {
    const out = [];
    const peers = el("section", { class: "card", "data-servers": "" }, el("h3", { text: "Raft peers" }));
    if (d.conf.error) peers.append(problem("Raft configuration", d.conf));
    else {
      const byID = {};
      for (const s of (d.health.error ? [] : d.health.Servers || [])) byID[s.ID] = s;
      const leader = (d.conf.Servers || []).find(s => s.Leader);
      peers.querySelector("h3").append(...(leader ? [el("span", { class: "sub", text: "leader: " + leader.Node })]
        : [pier.status("critical"), el("span", { class: "sub", text: "no leader" })]));
      const rows = (d.conf.Servers || []).filter(s => pier.matches(s.Node + " " + s.Address + " " + s.ID)).map(s => {
        const h = byID[s.ID] || {};
        return [s.Node, s.Address, s.Leader ? pier.status("leader") : s.Voter ? "follower" : "non-voter",
          h.LastContact === undefined ? "–" : (s.Leader ? "(leads)" : h.LastContact),
          String(h.LastIndex !== undefined ? h.LastIndex : s.LastIndex !== undefined ? s.LastIndex : "–"),
          String(h.LastTerm !== undefined ? h.LastTerm : "–"),
          h.Healthy === undefined ? "–" : pier.status(h.Healthy ? "passing" : "critical")];
      });
      peers.append(pier.table(["node", "address", "role", "last contact", { name: "last index", num: true }, { name: "term", num: true }, "health"], rows));
      if (d.health.error) peers.append(problem("Autopilot health", d.health));
      else peers.append(el("p", { class: "sub", text: "autopilot: " + (d.health.Healthy ? "healthy" : "unhealthy") + ", failure tolerance " + d.health.FailureTolerance }));
    }
    out.push(peers);

    const sess = el("section", { class: "card", "data-sessions": "" }, el("h3", { text: "Sessions and their locks" }));
    if (d.sessions.error) sess.append(problem("Sessions", d.sessions));
    else {
      const locks = d.locks.error ? [] : d.locks;
      const rows = d.sessions.filter(s => pier.matches([s.ID, s.Name, s.Node, ...locks.filter(l => l.Session === s.ID).map(l => l.Key)].join(" "))).map(s => {
        const held = el("ul", { class: "checks" });
        for (const l of locks.filter(l => l.Session === s.ID)) held.append(el("li", null, el("a", { href: "#kv/" + l.Key.split("/").map(encodeURIComponent).join("/"), text: l.Key })));
        return [el("code", { text: s.ID }), s.Name || "", s.Node, s.Behavior || "", s.TTL || "", held.childElementCount ? held : "none"];
      });
      sess.append(rows.length ? pier.table(["session", "name", "node", "behavior", "TTL", "locks held"], rows) : el("p", { class: "empty", text: "No sessions." }));
      if (d.locks.error) sess.append(problem("Locks", d.locks));
    }
    out.push(sess);
    return out;
  }

  pier.pages.servers = { title: "Servers", load, draw };
})();
