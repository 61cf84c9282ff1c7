// The dashboard's page: sign-in, hash routes (#/, #/host/NAME, #/volume/NAME, #/vm/NAME, #/events,
// #/tasks), the live stream that keeps the snapshot, the events and the tasks current without a
// reload, and the actions: a dangerous one shows its preview (the same guards, nothing written) and
// runs only once the operator types the object's name.

import { ApiError, call, setToken, stream, token } from "./api.js";
import * as views from "./views.js";

const $ = (id) => document.getElementById(id);
const state = { snapshot: null, receivedAt: 0, tasks: [], events: [], live: null };

function showSignIn(message) {
  stopLive();
  setToken(null);
  $("sign-in").hidden = false;
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("main").innerHTML = "";
  $("sign-in-error").textContent = message ?? "";
  $("token").focus();
}

async function signIn(given) {
  try {
    state.snapshot = await call("/v1/dashboard/cluster", undefined, given);
    state.receivedAt = Date.now();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return showSignIn("That token was refused.");
    return showSignIn(error.message);
  }
  setToken(given);
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  state.tasks = (await call("/v1/dashboard/tasks")).tasks;
  startLive();
  render();
}

function stopLive() {
  state.live?.abort();
  state.live = null;
}

/** The stream, started again two seconds after it breaks, until sign-out. */
function startLive() {
  stopLive();
  const controller = new AbortController();
  state.live = controller;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        $("live").textContent = "live";
        await stream("/v1/dashboard/stream", onLive, controller.signal);
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status === 401) return showSignIn("The token is no longer accepted.");
      }
      if (controller.signal.aborted) return;
      $("live").textContent = "reconnecting…";
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };
  void run();
}

function onLive(name, data) {
  if (name === "snapshot") {
    state.snapshot = data;
    state.receivedAt = Date.now();
    render();
  } else if (name === "event") {
    for (const query of events.lists.keys()) events.stale.add(query);
    refreshEvents();
  } else if (name === "task") {
    state.tasks = [data, ...state.tasks.filter((t) => t.id !== data.id)];
    if (route()[0] === "tasks") render();
  }
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return parts[0] === "" ? ["overview"] : parts;
}

/** Draws the current page from the snapshot; focus stays where it was. */
function render() {
  if (state.snapshot === null || !$("sign-in").hidden) return;
  const focused = document.activeElement?.id || null;
  const [page, name] = route();
  const main = $("main");
  const html =
    page === "host"
      ? views.hostPage(state.snapshot, name)
      : page === "volume"
        ? views.volumePage(state.snapshot, name)
        : page === "vm"
          ? views.vmPage(state.snapshot, name)
          : page === "events"
            ? null
            : page === "tasks"
              ? views.tasksPage(state.snapshot, state.tasks)
              : views.overview(state.snapshot);
  if (html === null) {
    // The events page keeps its filter form; only its list is drawn again.
    if (main.dataset.page !== "events") main.innerHTML = views.eventsPage();
  } else {
    // What the operator chose or typed survives the redraw.
    const values = [...main.querySelectorAll("input[id], select[id]")].map((field) => [field.id, field.value]);
    main.innerHTML = html;
    for (const [id, value] of values) {
      const field = $(id);
      if (field && [...(field.options ?? [{ value }])].some((option) => option.value === value)) field.value = value;
    }
  }
  main.dataset.page = page;
  for (const a of document.querySelectorAll("#nav a"))
    a.toggleAttribute("aria-current", a.getAttribute("href") === `#/${page === "overview" ? "" : page}`);
  if (focused !== null) $(focused)?.focus();
  refreshEvents();
  tickAges();
}

/**
 * The event lists the pages show, by their query (host=NAME, volume=NAME, vm=NAME or a filter): drawn
 * from here on every redraw, fetched again when a new event arrives. A list is put into whichever
 * boxes show its query once the answer is in (a redraw may have replaced the box meanwhile).
 */
const events = { lists: new Map(), stale: new Set(), loading: new Set() };

function fillEventBoxes(query) {
  for (const box of document.querySelectorAll("[data-events]"))
    if (box.dataset.events === query && events.lists.has(query)) box.innerHTML = events.lists.get(query);
}

async function refreshEvents() {
  const queries = new Set([...document.querySelectorAll("[data-events]")].map((box) => box.dataset.events));
  for (const query of queries) {
    fillEventBoxes(query);
    if ((events.lists.has(query) && !events.stale.has(query)) || events.loading.has(query)) continue;
    events.loading.add(query);
    events.stale.delete(query);
    try {
      const answer = await call(`/v1/dashboard/events?${query}${query ? "&" : ""}limit=100`);
      events.lists.set(query, views.eventList(answer.events));
    } catch (error) {
      events.lists.set(query, `<p class="error" role="alert">${views.escape(error.message)}</p>`);
    } finally {
      events.loading.delete(query);
    }
    fillEventBoxes(query);
    // An event that arrived while this list loaded asks for it again.
    if (events.stale.has(query)) void refreshEvents();
  }
}

function tickAges() {
  const elapsed = Date.now() - state.receivedAt;
  for (const span of document.querySelectorAll("[data-age]"))
    span.textContent = views.age(Number(span.dataset.age) + elapsed);
}

// ---- actions ------------------------------------------------------------------------------------

let pending = null;

function closeAction() {
  $("action").hidden = true;
  pending?.opener?.focus();
  pending = null;
}

/**
 * Opens the action panel: with `confirmName`, the preview's summary and steps and a field where the
 * name must be typed; without, the action runs at once and the panel shows its answer.
 */
async function act({ title, path, body, confirmName, opener }) {
  pending = { path, body, confirmName, opener };
  $("action-title").textContent = title;
  $("action-body").innerHTML = "";
  $("action-message").textContent = "";
  $("action-message").className = "";
  $("action").hidden = false;
  const confirming = confirmName !== undefined;
  $("action-form").hidden = !confirming;
  if (!confirming) return run();
  $("action-form").hidden = false;
  $("confirm-label").textContent = `Type ${confirmName} to confirm`;
  $("confirm-name").value = "";
  $("action-confirm").disabled = true;
  try {
    const preview = await call(path, { ...body, preview: true });
    $("action-body").innerHTML =
      `<p class="preview">${views.escape(preview.summary)}</p>` +
      `<ul>${preview.steps.map((s) => `<li>${views.escape(s)}</li>`).join("")}</ul>`;
    $("action-confirm").disabled = false;
    $("confirm-name").focus();
  } catch (error) {
    refused(error);
    $("action-cancel").focus();
  }
}

function refused(error) {
  $("action-message").className = "error";
  $("action-message").textContent =
    error instanceof ApiError ? `Refused (${error.status} ${error.code}): ${error.message}` : error.message;
}

async function run() {
  const current = pending;
  try {
    const answer = await call(current.path, current.body);
    $("action-message").className = "ok";
    $("action-message").textContent =
      answer.done ??
      (answer.task ? `Started: follow it under Tasks (${answer.task.kind} of ${answer.task.target})` : "Done");
    if (answer.task) state.tasks = [answer.task, ...state.tasks];
    $("action-form").hidden = true;
  } catch (error) {
    refused(error);
  }
  $("action").hidden = false;
  $("action-cancel").focus();
}

function onAction(target) {
  const d = target.dataset;
  if (d.action === "drain")
    return act({
      title: `Drain host ${d.host}`,
      path: `/v1/dashboard/hosts/${d.host}/drain`,
      body: {},
      confirmName: d.host,
      opener: target,
    });
  if (d.action === "undrain")
    return act({
      title: `Undrain host ${d.host}`,
      path: `/v1/dashboard/hosts/${d.host}/undrain`,
      body: {},
      opener: target,
    });
  if (d.action === "identify")
    return act({
      title: `Identify disk ${d.host}/${d.disk}`,
      path: `/v1/dashboard/disks/${d.host}/${d.disk}/identify`,
      body: {},
      opener: target,
    });
  if (d.action === "vm")
    return act({
      title: `${d.verb[0].toUpperCase()}${d.verb.slice(1)} VM ${d.vm}`,
      path: `/v1/dashboard/vms/${d.vm}/${d.verb}`,
      body: {},
      confirmName: d.verb === "start" ? undefined : d.vm,
      opener: target,
    });
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("button[data-action]");
  if (target) onAction(target);
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  event.preventDefault();
  if (form.id === "sign-in-form") return signIn($("token").value.trim());
  if (form.id === "action-form") {
    if (pending === null || $("action-confirm").disabled) return;
    if ($("confirm-name").value !== pending.confirmName) {
      $("action-message").className = "error";
      $("action-message").textContent = `Type ${pending.confirmName} exactly to confirm; nothing was done.`;
      return;
    }
    return run();
  }
  if (form.dataset.action === "replace") {
    const { host, disk } = form.dataset;
    return act({
      title: `Replace disk ${host}/${disk} with ${form.elements.with.value}`,
      path: `/v1/dashboard/disks/${host}/${disk}/replace`,
      body: { with: form.elements.with.value },
      confirmName: `${host}/${disk}`,
      opener: form.querySelector("button"),
    });
  }
  if (form.dataset.action === "switchover") {
    const to = form.elements.to.value;
    return act({
      title: `Switch volume ${form.dataset.volume} over to ${to}`,
      path: `/v1/dashboard/volumes/${form.dataset.volume}/switchover`,
      body: { to },
      confirmName: form.dataset.volume,
      opener: form.querySelector("button"),
    });
  }
  if (form.id === "event-filter") {
    const query = new URLSearchParams();
    for (const field of ["host", "volume", "vm"])
      if (form.elements[field].value) query.set(field, form.elements[field].value.trim());
    const box = $("main").querySelector("[data-events]");
    box.dataset.events = query.toString();
    box.innerHTML = "";
    refreshEvents();
  }
});

$("action-cancel").addEventListener("click", closeAction);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("action").hidden) closeAction();
});
$("sign-out").addEventListener("click", () => showSignIn());
window.addEventListener("hashchange", () => {
  render();
  $("main").focus();
});
setInterval(tickAges, 1000);

if (token()) void signIn(token());
else showSignIn();
