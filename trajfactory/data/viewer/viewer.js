// trajfactory viewer: browse one dataset version, label trajectories, save the labels as a new version.
// Everything from the dataset is model- or person-written text: it is only ever put into the page as text
// (`textContent` / text nodes), never as HTML.
"use strict";

const PAGE = 50;
const FILTERS = ["verdict", "family", "site", "policy", "split", "review"];
const state = { offset: 0, total: 0, selected: null, info: null, opening: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Trajfactory-Viewer": "1" },
  };
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function badge(text, cls) {
  return el("span", { class: `badge ${cls || text}` }, text);
}

// ------------------------------------------------------------ header, filters, list

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  $("dataset").textContent = info.dataset;
  $("version").textContent = `${info.version} (parent: ${info.parent || "none"}; versions: ${info.versions.join(", ")})`;
  document.title = `${info.dataset} ${info.version} - trajfactory viewer`;
  $("split-filter").hidden = !info.has_split;
  const form = $("filters");
  for (const name of FILTERS) {
    const select = form.elements[name];
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "all"));
    for (const [value, n] of Object.entries(info.facets[name] || {})) {
      const label = name === "verdict" && value === "none" ? "no verdict" : value;
      select.append(el("option", { value }, `${label} (${n})`));
    }
    select.value = current;
    if (select.value !== current) select.value = "";
  }
  updateSave(info.pending);
}

function updateSave(pending) {
  $("save").disabled = pending === 0;
  $("save").textContent = pending ? `Save reviews (${pending})` : "Save reviews";
}

async function loadList() {
  const params = new URLSearchParams({ offset: state.offset, limit: PAGE });
  for (const name of FILTERS) {
    const v = $("filters").elements[name].value;
    if (v) params.set(name, v);
  }
  const page = await api(`/api/trajectories?${params}`);
  state.total = page.total;
  $("count").textContent = `${page.total} ${page.total === 1 ? "trajectory" : "trajectories"}`;
  $("list").replaceChildren(...page.rows.map(listItem));
  const last = Math.min(page.offset + page.rows.length, page.total);
  $("page").textContent = page.total ? `${page.offset + 1}-${last} of ${page.total}` : "none";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

function listItem(row) {
  const where = row.family || row.site || "";
  const review = row.review === "none" ? null : badge(row.pending ? `${row.review} (unsaved)` : row.review,
                                                      row.pending ? "pending" : row.review);
  return el("li", { "data-id": row.trajectory_id, class: row.trajectory_id === state.selected ? "selected" : "" },
    el("button", { type: "button", onclick: () => openTrajectory(row.trajectory_id) },
      el("div", {}, el("span", { class: "tid" }, row.trajectory_id), " ", badge(row.verdict === "none" ? "no verdict" : row.verdict, row.verdict), review),
      el("div", { class: "sub" }, [row.kind, row.policy, where, row.split, row.exit_status].filter(Boolean).join(" · "))));
}

// ------------------------------------------------------------ one trajectory

function argValue(value) {
  return typeof value === "string" ? el("pre", { class: "text arg" }, value) : el("pre", { class: "arg" }, JSON.stringify(value, null, 2));
}

function argsList(args) {
  if (args === null || typeof args !== "object" || Array.isArray(args)) return argValue(args);
  const dl = el("dl", { class: "args" });
  for (const [k, v] of Object.entries(args)) dl.append(el("dt", {}, k), el("dd", {}, argValue(v)));
  return dl;
}

function parseArgs(text) {
  try { return JSON.parse(text); } catch (e) { return text; }
}

function message(m) {
  const calls = (m.tool_calls || []).map((c) => el("div", { class: "call" },
    el("span", { class: "fn" }, `${c.function.name}(...)`), el("span", { class: "sub" }, `  ${c.id}`),
    argsList(parseArgs(c.function.arguments))));
  const who = m.role === "tool" ? `tool ${m.name || ""} ← ${m.tool_call_id || ""}` : m.role;
  return el("div", { class: `msg ${m.role}` }, el("div", { class: "role" }, who),
    m.content ? el("pre", { class: "text content" }, m.content) : null, calls);
}

function diff(title, text) {
  if (!text) return null;
  const lines = text.replace(/\n$/, "").split("\n").map((line) => {
    let kind = "ctx";
    if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ")) kind = "file";
    else if (line.startsWith("@@")) kind = "hunk";
    else if (line.startsWith("+")) kind = "add";
    else if (line.startsWith("-")) kind = "del";
    return el("span", { class: kind, "data-kind": kind }, line || " ");
  });
  return [el("h3", {}, title), el("pre", { class: "diff" }, lines)];
}

function step(s) {
  return el("div", { class: "step" },
    el("div", {}, el("b", {}, `step ${s.index}: ${s.tool}`), s.exit_code !== null ? el("span", { class: "sub" }, `  exit ${s.exit_code}`) : null),
    argsList(s.arguments),
    s.error ? el("pre", { class: "text error" }, `error: ${s.error}`) : null,
    s.observation ? el("details", {}, el("summary", {}, "observation"), el("pre", { class: "text" }, s.observation)) : null,
    s.screenshot ? (s.screenshot_stored
      ? el("img", { src: `/api/screenshot?sha=${encodeURIComponent(s.screenshot)}`, alt: `screenshot of step ${s.index}`, loading: "lazy" })
      : el("div", { class: "sub" }, `screenshot ${s.screenshot} is not in this version`)) : null);
}

function verdictTable(verdicts, web) {
  if (!verdicts.length && !web.length) return el("p", { class: "hint" }, "no verdicts");
  const rows = verdicts.map((v) => {
    const ev = v.evidence || {};
    const outcomes = [...(ev.FAIL_TO_PASS || []).map((o) => `F2P ${o.test}: ${o.outcome}`),
                      ...(ev.PASS_TO_PASS || []).map((o) => `P2P ${o.test}: ${o.outcome}`),
                      ...(ev.reverted || []).map((r) => `reverted ${r}`), ...(ev.refused || []).map((r) => `refused ${r}`)];
    if (ev.detail) outcomes.push(ev.detail);
    return el("tr", {}, el("td", {}, `${v.verifier} ${v.verifier_version}`),
      el("td", {}, badge(v.passed ? "passed" : "failed")), el("td", {}, String(v.score)),
      el("td", {}, el("pre", { class: "text evidence" }, outcomes.join("\n"))));
  });
  for (const w of web) {
    rows.push(el("tr", {}, el("td", {}, `verification (${w.verified_by})`),
      el("td", {}, badge(w.verified ? "passed" : "failed")), el("td", {}, ""), el("td", {}, w.reason)));
  }
  return el("table", { class: "verdicts" },
    el("tr", {}, el("th", {}, "verifier"), el("th", {}, "passed"), el("th", {}, "score"), el("th", {}, "evidence")), rows);
}

function taskSection(task) {
  if (!task) return el("p", { class: "hint" }, "the task is not in this version");
  const out = [el("h3", {}, task.kind === "web" ? `Web task ${task.task_id}` : `Task ${task.instance_id || task.task_id}`),
               el("pre", { class: "text statement" }, task.problem_statement || task.instruction || "")];
  if (task.kind === "web") {
    out.push(el("div", { class: "meta" }, `site ${task.environment ? task.environment.app : ""} · target ${task.target_site || ""} · feasible ${task.feasible}`));
    if (task.steps && task.steps.length) out.push(el("ol", { class: "spec" }, task.steps.map((s) => el("li", {}, s))));
    if (task.expected_outcome) out.push(el("div", {}, `expected: ${task.expected_outcome}`));
  } else {
    out.push(el("div", { class: "meta" }, `${task.repo} @ ${(task.base_commit || "").slice(0, 12)} · family ${task.family} · ${task.difficulty}`));
    out.push(el("div", { class: "sub" }, `FAIL_TO_PASS: ${(task.FAIL_TO_PASS || []).join(", ")}`));
    out.push(el("div", { class: "sub" }, `PASS_TO_PASS: ${(task.PASS_TO_PASS || []).join(", ")}`));
  }
  return out;
}

function reviewBox(d) {
  const t = d.trajectory;
  const note = el("textarea", { id: "note", placeholder: "note (why you accept or reject it)", "aria-label": "review note" },
                  d.review ? d.review.note : "");
  const current = el("span", { id: "current-review" }, d.review
    ? badge(d.pending ? `${d.review.label} (unsaved)` : `${d.review.label} (saved in this version)`, d.pending ? "pending" : d.review.label)
    : "not reviewed");
  const send = (label) => async () => {
    try {
      const res = await api("/api/reviews", { trajectory_id: t.trajectory_id, label, note: note.value });
      updateSave(res.pending);
      status(label ? `${t.trajectory_id}: ${label} (unsaved)` : `${t.trajectory_id}: label cleared`);
      await loadInfo();  // the review filter's counts
      await loadList();
      await openTrajectory(t.trajectory_id);
    } catch (e) { status(e.message, true); }
  };
  return el("div", { class: "review" }, current, note,
    el("button", { type: "button", class: "accept-btn", id: "accept", onclick: send("accept") }, "Accept"),
    el("button", { type: "button", class: "reject-btn", id: "reject", onclick: send("reject") }, "Reject"),
    d.pending ? el("button", { type: "button", id: "clear", onclick: send(null) }, "Clear") : null);
}

async function openTrajectory(id) {
  const ticket = ++state.opening;  // clicks faster than the answers: show only the last one asked for
  let d;
  try { d = await api(`/api/trajectory?id=${encodeURIComponent(id)}`); } catch (e) { return status(e.message, true); }
  if (ticket !== state.opening) return;
  state.selected = id;
  for (const li of $("list").children) li.classList.toggle("selected", li.dataset.id === id);
  const t = d.trajectory, ix = d.index;
  const policy = [t.policy.name, t.policy.model].filter(Boolean).join(" / ");
  const withShots = t.steps.some((s) => s.screenshot) || (d.task && d.task.kind === "web");
  $("detail").replaceChildren(...[
    el("h2", {}, t.trajectory_id),
    el("div", { class: "meta" }, el("span", {}, `task ${t.task_id}`), el("span", {}, `policy ${policy}`),
       el("span", {}, `sample ${t.sample}`), el("span", {}, `exit ${t.exit_status}`),
       ix.split ? el("span", {}, `split ${ix.split}`) : null,
       badge(ix.verdict === "none" ? "no verdict" : ix.verdict, ix.verdict)),
    reviewBox(d),
    taskSection(d.task),
    el("h3", {}, "Verdicts"), verdictTable(d.verdicts, d.web_verification),
    el("h3", {}, `Messages (${t.messages.length})`), el("div", { id: "messages" }, t.messages.map(message)),
    withShots ? [el("h3", {}, `Steps (${t.steps.length})`), el("div", { id: "steps" }, t.steps.map(step))] : null,
    diff("Final patch (the trajectory's)", t.final_patch),
    d.task ? diff("Gold patch (the task's fix)", d.task.patch) : null,
    d.task ? diff("Bug patch (made the task)", d.task.bug_patch) : null,
  ].flat(2).filter(Boolean));
}

// ------------------------------------------------------------ wiring

async function save() {
  $("save").disabled = true;
  try {
    const res = await api("/api/save", {});
    status(`saved ${res.reviews} labels as ${res.version} (parent ${res.parent}); now showing ${res.version}`);
    await loadInfo();
    await loadList();
    if (state.selected) await openTrajectory(state.selected);
  } catch (e) {
    status(e.message, true);
    updateSave(state.info ? 1 : 0);
  }
}

$("filters").addEventListener("change", () => { state.offset = 0; loadList().catch((e) => status(e.message, true)); });
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadList(); });
$("next").addEventListener("click", () => { state.offset += PAGE; loadList(); });
$("save").addEventListener("click", save);
window.addEventListener("beforeunload", (e) => { if (!$("save").disabled) e.preventDefault(); });
loadInfo().then(loadList).catch((e) => status(e.message, true));
