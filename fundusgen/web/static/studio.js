// The studio: compose a caption from attributes, queue generation jobs, poll their progress.
"use strict";
const form = document.getElementById("generate");
const prompt = document.getElementById("prompt");
const formError = document.getElementById("form-error");
const jobsBox = document.getElementById("jobs");
const modelStatus = document.getElementById("model-status");
const submitButton = document.getElementById("submit");
let polling = null;

function showError(message) {
  formError.textContent = message || "";
  formError.hidden = !message;
}

async function call(method, url, body) {
  const response = await fetch(url, {
    method, headers: body ? {"Content-Type": "application/json"} : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({error: `server error (${response.status})`}));
  if (!response.ok) throw new Error(data.error || `server error (${response.status})`);
  return data;
}

function attributes() {
  const a = {lesions: []};
  for (const name of ["eye", "dr_grade", "dme", "glaucoma", "cdr", "cataract", "quality"]) {
    a[name] = form.elements[name].value;
  }
  for (const box of form.querySelectorAll("input[name=lesion]:checked")) {
    const where = form.querySelector(`select[data-lesion="${box.value}"]`);
    a.lesions.push({lesion: box.value, region: where ? where.value : ""});
  }
  return a;
}

document.getElementById("compose").addEventListener("click", async () => {
  showError("");
  try {
    const composed = await call("POST", "/api/caption", attributes());
    prompt.value = composed.caption;
    form.elements.negative_prompt.value = composed.negative_prompt;
  } catch (e) { showError(e.message); }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const body = {prompt: prompt.value, negative_prompt: form.elements.negative_prompt.value};
  for (const name of ["seed", "steps", "guidance", "count", "anatomy_retries"]) body[name] = form.elements[name].value;
  try {
    await call("POST", "/api/jobs", body);
    poll();
  } catch (e) { showError(e.message); }
});

function element(tag, attrs, text) {
  const el = document.createElement(tag);
  Object.assign(el, attrs || {});
  if (text !== undefined) el.textContent = text;
  return el;
}

function renderJob(job) {
  const card = element("article", {className: `job ${job.status}`, id: `job-${job.id}`});
  const head = element("p", {className: "job-head"});
  let state = job.status;
  if (job.status === "queued") state += job.ahead ? ` (${job.ahead} ahead)` : " (next)";
  if (job.status === "running") state += ` ${Math.round(100 * job.progress)}%`;
  head.append(element("span", {className: "job-status"}, state), ` seed ${job.seed} · ${job.count} image(s)`);
  card.append(head, element("p", {className: "job-prompt"}, job.prompt));
  if (job.status === "running" || job.status === "queued") {
    card.append(element("progress", {max: 1, value: job.progress}));
  }
  if (job.error) card.append(element("p", {className: "error"}, job.error));
  if (job.images.length) {
    const row = element("div", {className: "thumbs"});
    job.images.forEach((img, i) => {
      const fig = element("figure");
      fig.append(element("img", {src: img.png, alt: `generated image ${i + 1}`}));
      const caption = element("figcaption");
      caption.append(element("a", {href: img.png, download: `fundusgen-${job.id}-${i}.png`}, "PNG"), " · ",
                     element("a", {href: img.json, download: `fundusgen-${job.id}-${i}.json`}, "metadata"));
      fig.append(caption);
      row.append(fig);
    });
    card.append(row);
  }
  return card;
}

async function refresh() {
  const data = await call("GET", "/api/jobs");
  if (data.jobs.length) jobsBox.replaceChildren(...data.jobs.map(renderJob));
  return data.jobs.some((j) => j.status === "queued" || j.status === "running");
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    while (await refresh()) await new Promise((r) => setTimeout(r, 700));
  } catch (e) {
    showError(e.message);
  } finally {
    polling = null;
  }
}

async function watchModel() {
  while (modelStatus.dataset.status === "loading") {
    await new Promise((r) => setTimeout(r, 1000));
    const m = await call("GET", "/api/model").catch(() => null);
    if (!m) continue;
    modelStatus.dataset.status = m.status;
    modelStatus.className = `status ${m.status}`;
    modelStatus.textContent = m.message;
    submitButton.disabled = m.status === "unavailable";
    if (m.status === "ready") {
      form.elements.steps.value = m.steps;
      form.elements.guidance.value = m.guidance;
    }
  }
}

poll();
watchModel();
