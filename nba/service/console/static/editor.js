// The draft editor: one text area per policy file, problems shown at their line as you type
// (the service validates the whole draft: ValidatePolicySet), completion of the fields the
// policy set's JSON Schema allows where the cursor is, the diff against live, the what-if
// preview, and publishing with the expected live version.
//
// Written here rather than taken from an editor library: the console installs with pip alone
// and no editor component ships in a maintained Python wheel; this needs a gutter, line marks
// and key completion, not a general editor.
"use strict";

(() => {
  const root = document.getElementById("draft");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const files = JSON.parse(document.getElementById("draft-files").textContent);
  let expectedLive = Number(root.dataset.liveVersion);
  const editors = {};
  let active = null;
  let schema = null;
  let checkTimer = null;
  let checking = 0;

  async function call(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "content-type": "application/json", "x-csrf-token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      const error = new Error(data.detail || `HTTP ${response.status}`);
      error.status = response.status;
      error.problem = data;
      throw error;
    }
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function current() {
    const out = {};
    for (const [name, editor] of Object.entries(editors)) out[name] = editor.area.value;
    return out;
  }

  // Editors ---------------------------------------------------------------------------------

  function build() {
    const tabs = document.getElementById("tabs");
    const holder = document.getElementById("editors");
    for (const name of Object.keys(files)) {
      const tab = el("button", { type: "button", role: "tab", class: "tab", "data-file": name, text: name });
      tab.addEventListener("click", () => show(name));
      tabs.append(tab);
      const gutter = el("div", { class: "gutter", "aria-hidden": "true" });
      const backdrop = el("div", { class: "backdrop", "aria-hidden": "true" });
      const area = el("textarea", {
        class: "code", spellcheck: "false", wrap: "off", autocapitalize: "off", autocomplete: "off",
        "aria-label": `${name} (YAML)`, "data-file": name,
      });
      area.value = files[name];
      const box = el("div", { class: "editor", "data-file": name, hidden: "" }, gutter, el("div", { class: "surface" }, backdrop, area));
      holder.append(box);
      editors[name] = { name, tab, box, gutter, backdrop, area, problems: [] };
      area.addEventListener("input", () => { paint(editors[name]); schedule(); complete(editors[name], false); });
      area.addEventListener("scroll", () => sync(editors[name]));
      area.addEventListener("keydown", (event) => keys(editors[name], event));
      area.addEventListener("blur", () => setTimeout(hideCompletion, 150));
      paint(editors[name]);
    }
    show(Object.keys(files)[0]);
  }

  function show(name) {
    for (const editor of Object.values(editors)) {
      const on = editor.name === name;
      editor.box.hidden = !on;
      editor.tab.classList.toggle("active", on);
      editor.tab.setAttribute("aria-selected", on ? "true" : "false");
    }
    active = editors[name];
  }

  function sync(editor) {
    editor.gutter.scrollTop = editor.area.scrollTop;
    editor.backdrop.scrollTop = editor.area.scrollTop;
    editor.backdrop.scrollLeft = editor.area.scrollLeft;
  }

  // The gutter numbers the lines and marks those with a problem; the backdrop, behind the
  // transparent text area, tints the same lines.
  function paint(editor) {
    const lines = editor.area.value.split("\n");
    const marks = new Map();
    for (const problem of editor.problems) {
      if (problem.line > 0 && marks.get(problem.line) !== "error") marks.set(problem.line, problem.severity);
    }
    const gutter = document.createDocumentFragment();
    const backdrop = document.createDocumentFragment();
    lines.forEach((text, index) => {
      const mark = marks.get(index + 1);
      const number = el("div", { class: mark ? `line ${mark}` : "line", "data-line": String(index + 1), text: String(index + 1) });
      if (mark) number.title = editor.problems.filter((p) => p.line === index + 1).map((p) => p.message).join("\n");
      gutter.append(number);
      backdrop.append(el("div", { class: mark ? `line ${mark}` : "line", text: text || " " }));
    });
    editor.gutter.replaceChildren(gutter);
    editor.backdrop.replaceChildren(backdrop);
    sync(editor);
  }

  function goTo(name, line) {
    const editor = editors[name];
    if (!editor) return;
    show(name);
    const lines = editor.area.value.split("\n");
    let start = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    editor.area.focus();
    editor.area.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const height = parseFloat(getComputedStyle(editor.area).lineHeight) || 18;
    editor.area.scrollTop = Math.max(0, (line - 5) * height);
    sync(editor);
  }

  // Validation as you type ------------------------------------------------------------------

  function schedule() {
    clearTimeout(checkTimer);
    setStatus("checking…", "busy");
    checkTimer = setTimeout(check, 400);
  }

  async function check() {
    const mine = ++checking;
    try {
      const answer = await call("POST", "/console/api/validate", { files: current() });
      if (mine !== checking) return; // a newer check is on its way
      showProblems(answer.problems);
      const errors = answer.problems.filter((p) => p.severity === "error").length;
      const warnings = answer.problems.length - errors;
      if (answer.valid) setStatus(warnings ? `valid, ${warnings} warning${warnings > 1 ? "s" : ""}` : "valid", "ok");
      else setStatus(`${errors} error${errors > 1 ? "s" : ""}`, "bad");
    } catch (error) {
      if (mine === checking) setStatus(error.message, "bad");
    }
  }

  function setStatus(text, kind) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.className = `status ${kind}`;
  }

  function showProblems(problems) {
    for (const editor of Object.values(editors)) editor.problems = problems.filter((p) => p.file === editor.name);
    for (const editor of Object.values(editors)) {
      paint(editor);
      editor.tab.classList.toggle("has-error", editor.problems.some((p) => p.severity === "error"));
    }
    const list = document.getElementById("problems");
    list.replaceChildren(...problems.map((problem) => {
      const where = problem.line ? `${problem.file}, line ${problem.line}` : (problem.file || "the set");
      const item = el("li", { class: `problem ${problem.severity}`, "data-file": problem.file, "data-line": String(problem.line) },
        el("span", { class: "where", text: where }),
        el("span", { class: "what", text: `${problem.where ? problem.where + ": " : ""}${problem.message}` }));
      if (problem.file && editors[problem.file]) item.addEventListener("click", () => goTo(problem.file, problem.line || 1));
      return item;
    }));
  }

  // Completion from the JSON Schema ---------------------------------------------------------

  // The chain of keys and list items that leads to the cursor's line, read from indentation.
  function pathAt(text, caret) {
    const before = text.slice(0, caret).split("\n");
    const here = before.pop();
    const stack = [];
    const pop = (column, item) => {
      while (stack.length) {
        const top = stack[stack.length - 1];
        if (top.column > column || (top.column === column && (top.kind === "key" || item))) stack.pop();
        else break;
      }
    };
    const read = (line, last) => {
      const match = /^(\s*)(- +)?(.*)$/.exec(line);
      const indent = match[1].length;
      const rest = match[3];
      if (!last && (!rest.trim() && !match[2])) return null;
      if (!last && rest.trim().startsWith("#")) return null;
      let column = indent;
      if (match[2]) {
        pop(indent, true);
        stack.push({ kind: "item", column: indent });
        column = indent + match[2].length;
      }
      const key = /^([A-Za-z_][\w.-]*):(\s*)(.*)$/.exec(rest);
      return { column, key, item: Boolean(match[2]), rest };
    };
    for (const line of before) {
      const parsed = read(line, false);
      if (!parsed || !parsed.key) continue;
      if (!parsed.item) pop(parsed.column, false);
      const value = parsed.key[3].trim();
      if (!value || value.startsWith("#")) stack.push({ kind: "key", column: parsed.column, name: parsed.key[1] });
    }
    const parsed = read(here, true);
    if (!parsed.item) pop(parsed.column, false);
    return { path: stack.map((f) => (f.kind === "item" ? "[]" : f.name)), line: parsed };
  }

  function resolve(node) {
    let guard = 0;
    while (node && node.$ref && guard++ < 20) node = schema.$defs[node.$ref.split("/").pop()];
    return node || {};
  }

  // Every alternative a schema allows (anyOf/oneOf), each resolved.
  function alternatives(node) {
    node = resolve(node);
    const options = node.anyOf || node.oneOf;
    if (!options) return [node];
    return options.flatMap((option) => alternatives(option));
  }

  function step(node, name) {
    const out = [];
    for (const option of alternatives(node)) {
      if (name === "[]") {
        if (option.items) out.push(...alternatives(option.items));
      } else if (option.properties && option.properties[name]) out.push(...alternatives(option.properties[name]));
      else if (option.additionalProperties && typeof option.additionalProperties === "object") out.push(...alternatives(option.additionalProperties));
    }
    return out;
  }

  function suggestions(editor) {
    if (!schema) return null;
    const caret = editor.area.selectionStart;
    const { path, line } = pathAt(editor.area.value, caret);
    let nodes = [schema];
    for (const name of path) nodes = nodes.flatMap((node) => step(node, name));
    const valueMatch = line.key && /^([A-Za-z_][\w.-]*):\s*(\S*)$/.exec(line.rest);
    if (valueMatch) {
      const values = new Set();
      for (const node of nodes.flatMap((n) => step(n, valueMatch[1]))) {
        if (node.enum) node.enum.forEach((v) => values.add(String(v)));
        if (node.const !== undefined) values.add(String(node.const));
        if (node.type === "boolean") { values.add("true"); values.add("false"); }
      }
      const typed = valueMatch[2];
      return { typed, items: [...values].filter((v) => v.startsWith(typed) && v !== typed).map((v) => ({ label: v, insert: v })) };
    }
    const typedMatch = /^([A-Za-z_][\w-]*)?$/.exec(line.rest);
    if (!typedMatch) return null;
    const typed = typedMatch[1] || "";
    const keys = new Map();
    for (const node of nodes) {
      for (const option of alternatives(node)) {
        for (const [name, spec] of Object.entries(option.properties || {})) {
          if (!keys.has(name)) keys.set(name, resolve(spec).description || "");
        }
      }
    }
    return {
      typed,
      items: [...keys].filter(([name]) => name.startsWith(typed) && name !== typed)
        .map(([name, description]) => ({ label: name, insert: `${name}: `, description })),
    };
  }

  const menu = document.getElementById("completion");
  let offered = null;

  function complete(editor, asked) {
    const found = suggestions(editor);
    if (!found || !found.items.length || (!asked && !found.typed)) { hideCompletion(); return; }
    offered = { editor, typed: found.typed, items: found.items.slice(0, 30), index: 0 };
    const list = menu.querySelector("ul");
    list.replaceChildren(...offered.items.map((item, n) => {
      const option = el("li", { role: "option", "data-index": String(n) }, el("code", { text: item.label }));
      if (item.description) option.append(el("span", { class: "muted", text: ` ${item.description}` }));
      option.addEventListener("mousedown", (event) => { event.preventDefault(); offered.index = n; accept(); });
      return option;
    }));
    place(editor);
    highlight();
    menu.hidden = false;
  }

  function place(editor) {
    const area = editor.area;
    const style = getComputedStyle(area);
    const lineHeight = parseFloat(style.lineHeight) || 18;
    const probe = el("span", { text: "M".repeat(10) });
    probe.style.font = style.font;
    probe.style.visibility = "hidden";
    document.body.append(probe);
    const charWidth = probe.getBoundingClientRect().width / 10;
    probe.remove();
    const before = area.value.slice(0, area.selectionStart).split("\n");
    const row = before.length;
    const column = before[before.length - 1].length;
    const box = area.getBoundingClientRect();
    menu.style.top = `${window.scrollY + box.top + parseFloat(style.paddingTop) + row * lineHeight - area.scrollTop}px`;
    menu.style.left = `${window.scrollX + box.left + parseFloat(style.paddingLeft) + column * charWidth - area.scrollLeft}px`;
  }

  function highlight() {
    menu.querySelectorAll("li").forEach((item, n) => item.classList.toggle("selected", n === offered.index));
  }

  function hideCompletion() {
    menu.hidden = true;
    offered = null;
  }

  function accept() {
    if (!offered) return;
    const { editor, typed } = offered;
    const item = offered.items[offered.index];
    const area = editor.area;
    const at = area.selectionStart;
    area.setRangeText(item.insert, at - typed.length, at, "end");
    hideCompletion();
    paint(editor);
    schedule();
    area.focus();
  }

  function keys(editor, event) {
    if (event.ctrlKey && event.code === "Space") { event.preventDefault(); complete(editor, true); return; }
    if (offered && !menu.hidden) {
      if (event.key === "ArrowDown") { offered.index = (offered.index + 1) % offered.items.length; highlight(); event.preventDefault(); }
      else if (event.key === "ArrowUp") { offered.index = (offered.index + offered.items.length - 1) % offered.items.length; highlight(); event.preventDefault(); }
      else if (event.key === "Enter" || event.key === "Tab") { event.preventDefault(); accept(); }
      else if (event.key === "Escape") { event.preventDefault(); hideCompletion(); }
      return;
    }
    if (event.key === "Tab") { // two spaces, as YAML wants
      event.preventDefault();
      editor.area.setRangeText("  ", editor.area.selectionStart, editor.area.selectionEnd, "end");
      paint(editor);
    }
  }

  // Diff, preview, publish ------------------------------------------------------------------

  async function showDiff() {
    const panel = document.getElementById("diff");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted", text: "comparing…" }));
    try {
      const answer = await call("POST", "/console/api/diff", { files: current() });
      if (!answer.files.length) { panel.replaceChildren(el("p", { text: "The draft is the live set: nothing differs." })); return; }
      panel.replaceChildren(el("h2", { text: `Changes against live version ${answer.live_version}` }),
        ...answer.files.map((file) => el("div", { class: "diff-file" },
          el("h3", {}, el("code", { text: file.name }), ` (${file.status})`),
          el("pre", { class: "diff" }, ...file.lines.map((line) => el("div", { class: `d-${line.kind}`, text: line.text }))))));
    } catch (error) {
      panel.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  }

  const percent = (value) => `${(100 * value).toFixed(1)}%`;

  async function runPreview() {
    const panel = document.getElementById("preview");
    panel.hidden = false;
    panel.replaceChildren(el("p", { class: "muted", text: "replaying logged decisions against the draft…" }));
    try {
      const lastN = Number(document.getElementById("last-n").value) || 1000;
      const report = await call("POST", "/console/api/preview", { files: current(), last_n: lastN });
      const parts = [el("h2", { text: `What-if: ${report.decisions} logged decisions replayed against live ${report.live_version} and the draft` })];
      if (report.note) parts.push(el("p", { class: "muted", text: report.note }));
      const estimate = (label, value) => value ? el("p", { class: "estimate", "data-set": label },
        `${label}: mean reward ${value.value.toFixed(4)} [${value.low.toFixed(4)}, ${value.high.toFixed(4)}] `,
        el("span", { class: "muted", text: `(${value.estimator}, 95% interval, effective sample size ${Math.round(value.ess)})` })) : null;
      const live = estimate("live", report.live_value);
      const draft = estimate("draft", report.draft_value);
      if (live) parts.push(live);
      if (draft) parts.push(draft);
      const chart = el("div", { id: "preview-chart", class: "chart" });
      if (report.live_value && report.draft_value) parts.push(chart);
      const totals = el("table", { class: "data", id: "preview-totals" },
        el("thead", {}, el("tr", {}, el("th", { text: "" }), el("th", { class: "num", text: "live" }), el("th", { class: "num", text: "draft" }))));
      const body = el("tbody");
      for (const key of ["fallback_rate", "empty_rate", "rule_error_rate", "mean_eligible"]) {
        const fmt = key === "mean_eligible" ? (v) => Number(v).toFixed(2) : percent;
        body.append(el("tr", {}, el("td", { text: key.replaceAll("_", " ") }), el("td", { class: "num", text: fmt(report.live[key]) }), el("td", { class: "num", text: fmt(report.draft[key]) })));
      }
      totals.append(body);
      parts.push(totals);
      const offers = el("table", { class: "data", id: "preview-offers" },
        el("thead", {}, el("tr", {}, el("th", { text: "offer" }),
          ...["eligible live", "eligible draft", "first-slot share live", "draft"].map((h) => el("th", { class: "num", text: h })),
          el("th", { text: "change" }))));
      const rows = el("tbody");
      for (const offer of report.offers) {
        rows.append(el("tr", {}, el("td", {}, el("code", { text: offer.offer_id })),
          el("td", { class: "num", text: percent(offer.live_eligible_rate) }), el("td", { class: "num", text: percent(offer.draft_eligible_rate) }),
          el("td", { class: "num", text: percent(offer.live_share) }), el("td", { class: "num", text: percent(offer.draft_share) }),
          el("td", { text: offer.change || "" })));
      }
      offers.append(rows);
      parts.push(offers);
      for (const warning of report.warnings || []) parts.push(el("p", { class: "warning", text: warning.message }));
      panel.replaceChildren(...parts);
      if (report.live_value && report.draft_value && window.Plotly) {
        const sets = [["live", report.live_value], ["draft", report.draft_value]];
        window.Plotly.newPlot(chart, [{
          type: "scatter", mode: "markers", x: sets.map(([label]) => label), y: sets.map(([, v]) => v.value),
          error_y: { type: "data", symmetric: false, array: sets.map(([, v]) => v.high - v.value), arrayminus: sets.map(([, v]) => v.value - v.low), color: "#444" },
          marker: { size: 12, color: ["#5b6b7f", "#2f7d5b"] },
        }], { title: { text: "Mean reward per decision (95% interval)" }, height: 300, margin: { t: 40, r: 20, b: 40, l: 60 } },
        { displayModeBar: false, responsive: true });
      }
    } catch (error) {
      panel.replaceChildren(el("p", { class: "error", text: error.message }));
      if (error.problem && error.problem.problems) showProblems(located(error.problem.problems));
    }
  }

  // A refusal's problems as the validation shows them.
  function located(problems) {
    return problems.map((p) => ({
      severity: p.severity || "error", file: p.file || "", line: p.line || 0, message: p.message,
      where: [p.offer && `offer '${p.offer}'`, p.policy && `policy '${p.policy}'`, p.field && `field '${p.field}'`].filter(Boolean).join(": "),
    }));
  }

  async function publish(event) {
    event.preventDefault();
    const result = document.getElementById("publish-result");
    const comment = document.getElementById("comment").value;
    result.className = "";
    result.textContent = "publishing…";
    try {
      const answer = await call("POST", "/console/api/publish", { files: current(), comment, expected_live_version: expectedLive });
      expectedLive = Number(answer.live.version);
      document.getElementById("draft-version").textContent = answer.live.label;
      result.className = "notice";
      result.replaceChildren(answer.unchanged ? `Version ${answer.live.label} was live already: nothing changed.` : `Published: version ${answer.live.label} is live. `,
        el("a", { href: "/console/policies", text: "See the live set and its history" }));
    } catch (error) {
      result.className = "error";
      if (error.status === 412) {
        const now = (/version (\d+) is live/.exec(error.message) || [])[1];
        result.replaceChildren(`Not published: version ${now || "another"} was made live (a publish or a rollback) since this draft began from version ${expectedLive}. `,
          "Your draft is still here. ", el("a", { href: "/console/policies", target: "_blank", text: "Open the live set in a new tab" }),
          ", carry your changes into a draft of it, and publish from there.");
      } else {
        result.textContent = error.message.split("\n")[0];
        if (error.problem && error.problem.problems) showProblems(located(error.problem.problems));
      }
    }
  }

  // The draft, the live set and what was logged, evaluated offline in the background.
  async function evaluateDraft() {
    const result = document.getElementById("publish-result");
    result.className = "";
    result.textContent = "starting the evaluation…";
    try {
      const started = await call("POST", "/console/api/evaluations", { targets: ["logged", "live", "draft"], draft_files: current() });
      // the draft stays here: the report opens beside it
      result.className = "notice";
      result.replaceChildren(`Evaluation ${started.id} started (the draft, the live set and what was logged). `,
        el("a", { href: `/console/evaluations/${started.id}`, target: "_blank", id: "evaluation-link", text: "Open its report" }),
        " (in a new tab: this draft stays as it is).");
    } catch (error) {
      result.className = "error";
      result.textContent = error.message.split("\n")[0];
      if (error.problem && error.problem.problems) showProblems(located(error.problem.problems));
    }
  }

  build();
  document.getElementById("show-diff").addEventListener("click", showDiff);
  document.getElementById("evaluate-draft").addEventListener("click", evaluateDraft);
  document.getElementById("run-preview").addEventListener("click", runPreview);
  const form = document.getElementById("publish");
  if (form) form.addEventListener("submit", publish);
  call("GET", "/console/api/schema").then((found) => { schema = found; }).catch(() => {});
  check();
})();
