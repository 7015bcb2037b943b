// The KV page: folders (?keys&separator=/), a key's value as text, JSON
// or hex, and create, edit and delete. An edit is a check-and-set on the
// index the value was read at, so a change made meanwhile (on any node) is
// refused rather than overwritten. Routes under pier/routes/ and
// pier/tcp-routes/ are checked by the agent (PUT /v1/pier/validate/route,
// /v1/pier/validate/tcp-route) before they are saved.
"use strict";

(function () {
  const pier = window.pier;
  const el = pier.el;
  const ROUTES = "pier/routes/";
  const TCP_ROUTES = "pier/tcp-routes/";
  let flash = ""; // shown once, by the next drawing of a key

  const enc = path => path.split("/").map(encodeURIComponent).join("/");
  const href = path => "#kv/" + enc(path);
  const parent = path => path.replace(/[^/]*\/?$/, "");

  async function load(path) {
    if (path === "" || path.endsWith("/")) {
      const r = await pier.send("GET", "/v1/kv/" + enc(path) + "?keys&separator=/");
      if (r.status === 404) return { folder: path, keys: [] };
      // A token may read a folder deeper down without listing this one.
      if (r.status === 403) return { folder: path, keys: [], denied: r.text.trim() };
      if (!r.ok) throw Object.assign(new Error(r.text), { status: r.status, reason: r.text.trim() });
      return { folder: path, keys: JSON.parse(r.text) };
    }
    const r = await pier.send("GET", "/v1/kv/" + enc(path));
    if (r.status === 404) return { key: path, entry: null };
    if (!r.ok) throw Object.assign(new Error(r.text), { status: r.status, reason: r.text.trim() });
    return { key: path, entry: JSON.parse(r.text)[0] };
  }

  function crumbs(path) {
    const nav = el("nav", { class: "crumbs", "aria-label": "KV path" }, el("a", { href: "#kv/", text: "kv" }));
    let at = "";
    const parts = path.split("/");
    parts.forEach((p, i) => {
      if (p === "" && i === parts.length - 1) return;
      at += p + (i < parts.length - 1 ? "/" : "");
      nav.append(" / ", i === parts.length - 1 ? el("span", { "aria-current": "page", text: p }) : el("a", { href: href(at), text: p }));
    });
    return nav;
  }

  // decode reads a value: text when it is UTF-8 without control
  // characters, JSON when it parses, else bytes shown as hex.
  function decode(b64) {
    const bin = atob(b64 || "");
    const bytes = Uint8Array.from(bin, c => c.charCodeAt(0));
    let text = null;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) text = null;
    } catch (e) { text = null; }
    if (text === null) return { kind: "binary", bytes };
    try {
      const v = JSON.parse(text);
      if (v !== null && typeof v === "object") return { kind: "JSON", text, pretty: JSON.stringify(v, null, 2) };
    } catch (e) { /* text */ }
    return { kind: "text", text };
  }

  function hex(bytes) {
    const lines = [];
    for (let i = 0; i < bytes.length; i += 16) {
      const row = Array.from(bytes.slice(i, i + 16));
      lines.push(i.toString(16).padStart(8, "0") + "  " + row.map(b => b.toString(16).padStart(2, "0")).join(" ").padEnd(48) +
        "  " + row.map(b => b >= 32 && b < 127 ? String.fromCharCode(b) : ".").join(""));
    }
    return lines.join("\n");
  }

  // field is a labelled input with a place for its error, tied to it for
  // screen readers.
  function field(id, labelText, input) {
    input.id = id;
    input.setAttribute("aria-describedby", id + "-error");
    const err = el("p", { id: id + "-error", class: "field-error", role: "alert" });
    return { input, err, box: el("div", { class: "field" }, el("label", { for: id, text: labelText }), input, err) };
  }

  function fail(f, text) {
    f.err.textContent = text;
    f.input.setAttribute("aria-invalid", "true");
    f.input.focus();
  }

  function ok(f) {
    f.err.textContent = "";
    f.input.removeAttribute("aria-invalid");
  }

  // checkRoute asks the agent whether value is a route; it answers the
  // reason it is not, or "".
  async function checkRoute(key, value) {
    let check;
    if (key.startsWith(ROUTES)) check = "/v1/pier/validate/route";
    else if (key.startsWith(TCP_ROUTES)) check = "/v1/pier/validate/tcp-route";
    else return "";
    const r = await pier.send("PUT", check, value);
    if (r.ok) return "";
    if (r.status === 404 || r.status === 405) return ""; // an older agent: the front door reports it
    return "Not a valid route: " + r.text.trim();
  }

  function refused(r) {
    if (r.status === 403) return "Refused: " + r.text.trim() + " (the token may not write this key)";
    return "Refused (" + r.status + "): " + r.text.trim();
  }

  // confirm turns a button into a question with its own yes and no, so a
  // delete takes two deliberate steps and works by keyboard.
  function confirmButton(label, question, action) {
    const box = el("span", { class: "confirm" });
    const start = el("button", { type: "button", class: "danger", text: label });
    start.addEventListener("click", () => {
      const yes = el("button", { type: "button", class: "danger", text: "Yes, delete" });
      const no = el("button", { type: "button", text: "Cancel" });
      box.replaceChildren(el("span", { role: "alert", text: question + " " }), yes, " ", no);
      no.addEventListener("click", () => { box.replaceChildren(start); start.focus(); });
      yes.addEventListener("click", action);
      no.focus();
    });
    box.append(start);
    return box;
  }

  // newKeyForm creates a key with cas=0, so that it never replaces one.
  function newKeyForm(d) {
    const key = field("kv-new-key", "Key", el("input", { type: "text", value: d.folder, autocomplete: "off", spellcheck: "false" }));
    const value = field("kv-new-value", "Value", el("textarea", { rows: "6", spellcheck: "false" }));
    const form = el("form", { class: "card kv-form", "aria-label": "New key" }, el("h3", { text: "New key" }), key.box, value.box,
      el("div", { class: "buttons" }, el("button", { type: "submit", class: "primary", text: "Create" })));
    form.addEventListener("submit", async e => {
      e.preventDefault();
      ok(key); ok(value);
      const k = key.input.value.trim().replace(/^\/+/, "");
      if (!k || k.endsWith("/")) return fail(key, "A key needs a name after its folder.");
      const bad = await checkRoute(k, value.input.value);
      if (bad) return fail(value, bad);
      const r = await pier.send("PUT", "/v1/kv/" + enc(k) + "?cas=0", value.input.value);
      if (!r.ok) return fail(value, refused(r));
      if (r.text.trim() !== "true") return fail(key, "A key named " + k + " exists already: open it to edit it.");
      location.hash = href(k);
    });
    return form;
  }

  function drawFolder(d) {
    const out = [crumbs(d.folder)];
    const rows = [];
    for (const k of d.keys) {
      const name = k.slice(d.folder.length);
      if (!pier.matches(k)) continue;
      const folder = k.endsWith("/");
      rows.push([el("a", { href: href(k), text: name || "(this folder's own key)" }), folder ? "folder" : "key"]);
    }
    out.push(el("section", { class: "card", "data-kv-folder": d.folder },
      el("h3", null, el("code", { text: d.folder || "/" }), el("span", { class: "sub", text: d.keys.length + " entries" }),
        d.folder ? confirmButton("Delete folder", "Delete " + d.folder + " and every key under it?", async () => {
          const r = await pier.send("DELETE", "/v1/kv/" + enc(d.folder) + "?recurse");
          if (r.ok) location.hash = href(parent(d.folder));
          else msg.textContent = refused(r);
        }) : null),
      d.denied ? el("p", { class: "error", text: "The token may not list this folder (" + d.denied + "). Open a folder or key it may read:" })
        : rows.length ? pier.table(["name", "kind"], rows) : el("p", { class: "empty", text: pier.filter.value ? "Nothing matches the filter." : "Empty." })));
    const go = el("input", { type: "text", id: "kv-open", value: d.folder, autocomplete: "off", spellcheck: "false", "aria-label": "Open a path" });
    const goForm = el("form", { class: "buttons", "aria-label": "Open a path" }, go, el("button", { type: "submit", text: "Open" }));
    goForm.addEventListener("submit", e => { e.preventDefault(); location.hash = href(go.value.trim().replace(/^\/+/, "")); });
    const msg = el("p", { class: "field-error", role: "alert" });
    out[1].append(msg, goForm);
    // A new key, created with cas=0 so that it never replaces one.
    const form = keep(d, "new", () => newKeyForm(d));
    out.push(form);
    return out;
  }

  function drawKey(d) {
    const out = [crumbs(d.key)];
    const e = d.entry;
    if (!e) {
      out.push(el("p", { class: "empty", text: "No key " + d.key + " (deleted?)." }), el("a", { href: href(parent(d.key)), text: "Back to the folder" }));
      return out;
    }
    const v = decode(e.Value);
    const card = el("section", { class: "card", "data-kv-key": d.key });
    card.append(el("h3", null, el("code", { text: d.key }), el("span", { class: "tag", text: v.kind }),
      el("span", { class: "sub", text: "index " + e.ModifyIndex + (e.Flags ? " · flags " + e.Flags : "") + (e.Session ? " · locked by session " + e.Session : "") })));
    card.append(el("pre", { class: "value", id: "kv-shown", tabindex: "0", "aria-label": "value as " + v.kind },
      v.kind === "binary" ? hex(v.bytes) : v.kind === "JSON" ? v.pretty : v.text));
    const msg = el("p", { id: "kv-message", role: "status", text: flash });
    flash = "";
    if (v.kind !== "binary") {
      const value = field("kv-value", "Edit the value", el("textarea", { rows: String(Math.min(20, Math.max(4, v.text.split("\n").length + 1))), spellcheck: "false" }));
      value.input.value = v.text;
      const form = el("form", { class: "kv-form", "aria-label": "Edit " + d.key }, value.box,
        el("div", { class: "buttons" }, el("button", { type: "submit", id: "kv-save", class: "primary", text: "Save" })));
      form.addEventListener("submit", async ev => {
        ev.preventDefault();
        ok(value);
        msg.textContent = "";
        const bad = await checkRoute(d.key, value.input.value);
        if (bad) return fail(value, bad);
        const r = await pier.send("PUT", "/v1/kv/" + enc(d.key) + "?cas=" + e.ModifyIndex, value.input.value);
        if (!r.ok) return fail(value, refused(r));
        if (r.text.trim() !== "true") {
          const now = await load(d.key).catch(() => null);
          const at = now && now.entry ? "index " + now.entry.ModifyIndex : "deleted";
          const reload = el("button", { type: "button", text: "Load the current value" });
          reload.addEventListener("click", () => pier.show());
          fail(value, "Not saved: someone changed this key since you opened it (index " + e.ModifyIndex + ", now " + at + "). Your text is still here; load the current value to edit that instead.");
          value.err.append(" ", reload);
          return;
        }
        flash = "Saved " + d.key + ".";
        pier.show();
      });
      card.append(form);
    } else {
      card.append(el("p", { class: "sub", text: "A binary value (" + v.bytes.length + " bytes) is shown as hex; change it with pier kv put." }));
    }
    card.append(el("div", { class: "buttons" }, confirmButton("Delete key", "Delete " + d.key + "?", async () => {
      const r = await pier.send("DELETE", "/v1/kv/" + enc(d.key) + "?cas=" + e.ModifyIndex);
      if (!r.ok) msg.textContent = refused(r);
      else if (r.text.trim() !== "true") msg.textContent = "Not deleted: someone changed this key since you opened it. Reload to see it.";
      else location.hash = href(parent(d.key));
    })), msg);
    out.push(card);
    return out;
  }

  // The filter box redraws the page as the user types; what holds typing
  // (a key's editor, the new-key form) is drawn once per load and reused,
  // so that a redraw keeps the text in it.
  const drawn = new WeakMap();
  function keep(d, part, make) {
    const m = drawn.get(d) || new Map();
    drawn.set(d, m);
    if (!m.has(part)) m.set(part, make());
    return m.get(part);
  }

  pier.pages.kv = {
    title: "Key/Value", poll: false, load,
    draw: d => d.keys ? drawFolder(d) : keep(d, "key", () => drawKey(d)),
  };
})();
