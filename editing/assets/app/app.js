// The editing page: a form for one EditRequest, a run queue on the server, its files shown as they are.
// Everything goes to this server only (same origin); nothing here loads from outside.
"use strict";

const POLL_MS = 300;  // how often a running edit is asked for its progress
const $ = (id) => document.getElementById(id);
const state = { upload: null, filename: "", mask: null, run: null, defaults: null };

function showError(message) {
  const line = $("error");
  line.textContent = message ? "error: " + message : "";
  line.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fillForm(info) {
  state.defaults = info.defaults;
  for (const [name, values] of Object.entries(info.choices)) {
    const select = $(name);
    for (const value of values) select.add(new Option(value, value));
  }
  $("dtype").value = info.dtype;
  for (const element of document.querySelectorAll("[data-field]")) {
    const value = info.defaults[element.dataset.field];
    if (element.type === "checkbox") element.checked = Boolean(value);
    else if (value !== null && value !== undefined) element.value = Array.isArray(value) ? value.join(" ") : value;
    const hint = info.method_defaults[element.dataset.field];
    if (hint) element.placeholder = "method default: " + hint;
  }
  $("model-line").textContent = `model ${info.model} (${info.resolution} px, ${info.dtype}); ` +
    "runs wait in one queue; a new target prompt reuses the photo's inversion";
  showMethod();
}

function showMethod() {
  const method = $("method").value;
  for (const element of document.querySelectorAll("[data-methods]")) {
    element.hidden = !element.dataset.methods.split(" ").includes(method);
  }
}

async function uploadFile(file) {
  const data = await file.arrayBuffer();
  return api("/api/upload?name=" + encodeURIComponent(file.name), { method: "POST", body: data });
}

async function choosePhoto() {
  const file = $("photo").files[0];
  state.upload = null;
  $("preview-box").hidden = true;
  if (!file) return;
  showError("");
  try {
    const info = await uploadFile(file);
    state.upload = info.upload;
    state.filename = file.name;
    await showPreview();
  } catch (error) {
    showError(error.message);
  }
}

async function showPreview() {
  if (!state.upload) return;
  const query = `upload=${encodeURIComponent(state.upload)}&crop=${encodeURIComponent($("crop").value)}`;
  const response = await fetch("/api/preview?" + query);
  if (!response.ok) { showError((await response.json()).error); return; }
  showError("");
  $("preview").src = URL.createObjectURL(await response.blob());
  $("preview-box").hidden = false;
}

async function chooseMask() {
  const file = $("mask").files[0];
  state.mask = null;
  if (!file) return;
  try { state.mask = (await uploadFile(file)).upload; showError(""); } catch (error) { showError(error.message); }
}

function formOptions() {
  const options = {};
  for (const element of document.querySelectorAll("[data-field]")) {
    const holder = element.closest("[data-methods]");
    if (holder && holder.hidden) continue;  // another method's option: that method's default stays
    const name = element.dataset.field;
    if (element.type === "checkbox") { options[name] = element.checked; continue; }
    const text = element.value.trim();
    if (text === "") continue;
    if (name === "blend_words") options[name] = text.split(/\s+/);
    else if (name === "reweight") options[name] = text.split(/[\s,]+/).filter(Boolean);
    else options[name] = text;
  }
  options.target_prompts = $("target_prompts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!$("mask").closest("[data-methods]").hidden) {
    if ($("auto_mask").checked) options.mask = "auto";
    else if (state.mask) options.mask = state.mask;
  }
  return options;
}

async function startRun(event) {
  event.preventDefault();
  showError("");
  $("status").dataset.state = "submitting";
  if (!state.upload) { showError("choose a photo file first"); return; }
  const form = { upload: state.upload, filename: state.filename, dtype: $("dtype").value, options: formOptions() };
  try {
    const run = await api("/api/run", { method: "POST", headers: { "Content-Type": "application/json" },
                                        body: JSON.stringify(form) });
    state.run = run.id;
    setBusy(true);
    showProgress(run);
    poll();
  } catch (error) {
    showError(error.message);
  }
}

function setBusy(busy) {
  $("run").disabled = busy;
  $("stop").disabled = !busy;
}

async function poll() {
  let run;
  try { run = await api("/api/run?id=" + encodeURIComponent(state.run)); } catch (error) {
    setBusy(false); showError(error.message); return;
  }
  showProgress(run);
  if (run.state === "queued" || run.state === "running") { setTimeout(poll, POLL_MS); return; }
  setBusy(false);
  if (run.state === "done") showResult(run);
  else if (run.state === "stopped") $("status").textContent = run.message;
  else showError(run.message);
}

function showProgress(run) {
  const bar = $("progress"), p = run.progress || {};
  if (run.state === "done") { bar.max = 1; bar.value = 1; }
  else if (p.total) { bar.max = p.total; bar.value = p.n; }
  else bar.removeAttribute("value");
  const where = p.desc ? `${p.desc} ${p.n}${p.total ? "/" + p.total : ""}` : "";
  $("status").textContent = `${run.id}: ${run.state}${where && run.state === "running" ? " - " + where : ""}`;
  $("status").dataset.state = run.state;
  $("status").dataset.run = run.id;
}

function figure(src, caption, className) {
  const box = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src + "?t=" + Date.now();
  img.alt = caption;
  if (className) img.className = className;
  const text = document.createElement("figcaption");
  text.textContent = caption;
  box.append(img, text);
  return box;
}

function showResult(run) {
  $("results").hidden = false;
  $("results").dataset.run = run.id;
  $("reuse").textContent = run.reuse_message;
  $("stages").textContent = "loops run: " + run.stages.join(", then ");
  $("images").replaceChildren(...run.images.map((i) => figure(i.src, i.caption, i.edit ? "edit" : "")));
  $("attention-box").hidden = !run.attention;
  if (run.attention) $("attention").src = run.attention + "?t=" + Date.now();
  $("sweeps").replaceChildren(...run.sweeps.map((src) => figure(src, "sweep", "sweep")));
  const rows = run.timings.map((t) => {
    const row = document.createElement("tr");
    row.dataset.stage = t.stage;
    for (const text of [t.stage.replace("_", " "), t.what, t.seconds.toFixed(3)]) {
      const cell = document.createElement("td"); cell.textContent = text; row.append(cell);
    }
    return row;
  });
  $("timings").tBodies[0].replaceChildren(...rows);
  $("zip").href = run.zip;
  $("files").textContent = run.files.join(", ");
}

async function stopRun() {
  if (!state.run) return;
  try { await api("/api/stop?id=" + encodeURIComponent(state.run), { method: "POST" }); } catch (error) {
    showError(error.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("form").addEventListener("submit", startRun);
  $("stop").addEventListener("click", stopRun);
  $("photo").addEventListener("change", choosePhoto);
  $("mask").addEventListener("change", chooseMask);
  $("crop").addEventListener("change", showPreview);
  $("method").addEventListener("change", showMethod);
  try { fillForm(await api("/api/defaults")); } catch (error) { showError(error.message); }
});
