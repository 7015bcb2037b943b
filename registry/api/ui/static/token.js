// The token: with ACLs on, the UI asks for one once per browser tab and
// keeps it in session storage (gone when the tab closes), and every request
// sends it; the API then answers only what the token may read.
"use strict";

(function () {
  const pier = window.pier;
  const el = pier.el;
  const KEY = "pier-token", ASKED = "pier-token-asked";
  const button = document.getElementById("token-button");
  let resolveReady = null;

  // aclOn asks the agent with no token: 401 is "ACL support disabled".
  async function aclOn() {
    const r = await fetch("/v1/acl/token/self", { cache: "no-store" }).catch(() => null);
    return r !== null && r.status !== 401;
  }

  function describe(t) {
    return t.Description || (t.AccessorID ? "token " + t.AccessorID.slice(0, 8) : "token");
  }

  function label(text) { button.textContent = "Token: " + text; }

  // prompt shows the dialog; it closes when a token is accepted or the
  // user goes on without one.
  function prompt() {
    const dialog = el("dialog", { id: "token-dialog", "aria-labelledby": "token-title" });
    const input = el("input", { id: "token-input", type: "password", autocomplete: "off", spellcheck: "false", "aria-describedby": "token-error" });
    const err = el("p", { id: "token-error", class: "field-error", role: "alert" });
    const form = el("form", { method: "dialog" },
      el("h2", { id: "token-title", text: "ACLs are on: which token?" }),
      el("p", { class: "sub", text: "The UI shows what the token may read. It stays in this tab only (session storage) and goes with the tab." }),
      el("label", { for: "token-input", text: "Secret ID" }), input, err,
      el("div", { class: "buttons" },
        el("button", { type: "submit", id: "token-use", class: "primary", text: "Use token" }),
        el("button", { type: "button", id: "token-anon", text: "Go on without a token" }),
        sessionStorage.getItem(KEY) ? el("button", { type: "button", id: "token-forget", text: "Forget the token" }) : null));
    dialog.append(form);
    document.body.append(dialog);
    const done = () => {
      dialog.close();
      dialog.remove();
      sessionStorage.setItem(ASKED, "1");
      if (resolveReady) { resolveReady(); resolveReady = null; } else pier.show();
    };
    form.addEventListener("submit", async e => {
      e.preventDefault();
      const secret = input.value.trim();
      if (!secret) { err.textContent = "Enter a token's Secret ID, or go on without one."; return; }
      const r = await fetch("/v1/acl/token/self", { headers: { "X-Consul-Token": secret }, cache: "no-store" });
      const text = await r.text();
      if (!r.ok) { err.textContent = "Refused (" + r.status + "): " + text.trim(); input.focus(); return; }
      sessionStorage.setItem(KEY, secret);
      label(describe(JSON.parse(text)));
      done();
    });
    dialog.querySelector("#token-anon").addEventListener("click", () => { sessionStorage.removeItem(KEY); label("anonymous"); done(); });
    const forget = dialog.querySelector("#token-forget");
    if (forget) forget.addEventListener("click", () => { sessionStorage.removeItem(KEY); label("anonymous"); done(); });
    dialog.addEventListener("cancel", e => { if (resolveReady) e.preventDefault(); }); // the first time, a choice is needed
    dialog.showModal();
    input.focus();
  }

  // ready resolves when the page may load: at once with ACLs off or a
  // token already chosen in this tab, else once the user chose.
  async function ready() {
    if (!(await aclOn())) return;
    button.hidden = false;
    const t = sessionStorage.getItem(KEY);
    if (t) {
      const r = await fetch("/v1/acl/token/self", { headers: { "X-Consul-Token": t }, cache: "no-store" });
      if (r.ok) { label(describe(await r.json())); return; }
      sessionStorage.removeItem(KEY); // deleted or expired meanwhile: ask again
    } else if (sessionStorage.getItem(ASKED)) {
      label("anonymous");
      return;
    }
    return new Promise(res => { resolveReady = res; prompt(); });
  }

  button.addEventListener("click", prompt);
  pier.token = { ready };
})();
