// The dashboard's pages as HTML text, from one snapshot of the cluster (GET /v1/dashboard/cluster):
// pure functions, every value escaped. Links are real links to hash routes (#/host/NAME), actions real
// buttons with data-action attributes that app.js handles.

export function escape(value) {
  return String(value ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

const link = (kind, name) => `<a href="#/${kind}/${encodeURIComponent(name)}">${escape(name)}</a>`;

/** "3 s", "2 min", "1 h" */
export function age(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.round(ms / 1000);
  return s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

/** An age that app.js keeps counting: the snapshot's value plus the time since it arrived. */
const ageSpan = (ms) => (ms === null ? "never" : `<span data-age="${ms}">${age(ms)}</span> ago`);

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function bar(percent, label) {
  const p = Math.max(0, Math.min(100, percent));
  return `<span class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${p.toFixed(0)}" aria-label="${escape(label)}"><span style="width:${p}%"></span></span> ${p.toFixed(0)}%`;
}

/** One copy, as a chip: primary, in sync, resyncing with its progress, or what else it is. */
function copyChip(volume, copy) {
  const primary = volume.primary?.host === copy.host;
  const state = copy.resync !== null ? "resyncing" : copy.state;
  const progress =
    copy.resync !== null
      ? ` ${bar(copy.resync.percent, `resync of ${volume.name} on ${copy.host}`)}${copy.resync.etaSeconds !== null ? `, ${copy.resync.etaSeconds} s left` : ""}`
      : "";
  return `<li class="copy ${escape(state)}${primary ? " primary" : ""}" data-copy="${escape(volume.name)}@${escape(copy.host)}">
    ${link("volume", volume.name)} <span class="tag">${primary ? "primary" : ""}</span>
    <span class="state">${escape(state)}</span>${progress}</li>`;
}

function badge(text, kind) {
  return `<span class="badge ${escape(kind ?? text)}">${escape(text)}</span>`;
}

function hostCard(snapshot, host) {
  const vms = snapshot.vms.filter((vm) => vm.host === host.name);
  const disks = host.diskViews
    .map((disk) => {
      const copies = snapshot.volumes
        .flatMap((volume) =>
          volume.copies.filter((c) => c.host === host.name && c.disk === disk.disk).map((c) => copyChip(volume, c)),
        )
        .join("");
      // A dead host's disks are as it last reported them: say so rather than show them online.
      const state =
        host.state === "dead"
          ? `${badge("unknown")} <span class="muted">(last reported ${escape(disk.state)})</span>`
          : badge(disk.state);
      return `<li class="disk"><span class="disk-name">${escape(disk.disk)}</span> ${state}
        <span class="muted">${bytes(disk.freeBytes)} free of ${bytes(disk.sizeBytes)}</span>
        <ul class="copies">${copies || '<li class="muted">no copies</li>'}</ul></li>`;
    })
    .join("");
  return `<article class="host ${escape(host.state)}" data-host="${escape(host.name)}" aria-label="host ${escape(host.name)}">
    <h3>${link("host", host.name)} ${badge(host.state)} ${host.maintenance ? badge("maintenance") : ""}</h3>
    ${healthLine(host)}
    <ul class="disks">${disks || '<li class="muted">no disks on record</li>'}</ul>
    <ul class="vms">${vms.map((vm) => `<li class="vm ${escape(vm.state)}" data-vm="${escape(vm.name)}">VM ${link("vm", vm.name)} ${badge(vm.state)}</li>`).join("")}</ul>
  </article>`;
}

function healthLine(host) {
  if (host.health === null) return `<p class="muted">no health check (the host is ${escape(host.state)})</p>`;
  const links = host.health.links
    .map(
      (l) =>
        `<li>link to ${link("host", l.peer)} ${badge(l.starting ? "starting" : l.up ? "up" : "down")} ${l.up && l.rttMs !== null ? `${l.rttMs.toFixed(1)} ms` : ""}</li>`,
    )
    .join("");
  const problems = host.health.problems.map((p) => `<li class="problem">${escape(p)}</li>`).join("");
  return `<p class="muted">health checked ${ageSpan(host.healthAgeMs)}, event-loop lag ${host.health.eventLoopLagMs} ms</p>
    <ul class="links">${links}${problems}</ul>`;
}

export function overview(snapshot) {
  const s = snapshot.summary;
  const volumes = snapshot.volumes
    .map(
      (
        v,
      ) => `<tr><th scope="row">${link("volume", v.name)}</th><td>${badge(v.health)}</td><td>${v.primary ? link("host", v.primary.host) : "none"}</td>
      <td><ul class="copies inline">${v.copies.map((c) => copyChip(v, c).replace(link("volume", v.name), link("host", c.host))).join("")}</ul></td></tr>`,
    )
    .join("");
  return `<h1>Cluster</h1>
    <p class="summary">${s.aliveHosts}/${s.hosts} hosts alive · ${s.healthyVolumes} healthy, ${s.degradedVolumes} degraded, ${s.downVolumes} down volumes · ${snapshot.vms.length} VMs · answered by ${escape(snapshot.servedBy)}</p>
    <section aria-label="hosts" class="hosts">${snapshot.hosts.map((h) => hostCard(snapshot, h)).join("")}</section>
    <h2>Volumes</h2>
    <div class="scroll"><table><thead><tr><th>volume</th><th>health</th><th>primary</th><th>copies</th></tr></thead><tbody>${volumes}</tbody></table></div>
    ${migrations(snapshot)}`;
}

function migrations(snapshot) {
  if (snapshot.migrations.length === 0) return "";
  return `<h2>Migrations</h2><ul>${snapshot.migrations
    .map((m) => {
      const p = m.progress;
      const percent = p && p.totalBytes > 0 ? (100 * (p.totalBytes - p.remainingBytes)) / p.totalBytes : 0;
      return `<li>VM ${link("vm", m.vm)} ${escape(m.from)} → ${escape(m.to)}: ${escape(m.phase)} ${bar(percent, `migration of ${m.vm}`)}</li>`;
    })
    .join("")}</ul>`;
}

export function eventList(events) {
  if (events.length === 0) return `<p class="muted">no events</p>`;
  return `<ol class="events" reversed>${[...events]
    .reverse()
    .map(
      (e) => `<li><time datetime="${escape(e.time)}">${escape(e.time.replace("T", " ").slice(0, 19))}</time>
        <span class="kind">${escape(e.kind)}</span> <span class="by">${escape(e.host)}</span> ${escape(e.message)}</li>`,
    )
    .join("")}</ol>`;
}

/** Replacing a disk by another of the same host (an administrator's action). */
function replaceForm(host, disk, disks) {
  const others = disks.filter((other) => other.disk !== disk);
  if (others.length === 0) return "";
  const id = `replace-${disk}`;
  return `<form class="inline-form" data-action="replace" data-host="${escape(host)}" data-disk="${escape(disk)}">
    <label for="${escape(id)}">replace with</label>
    <select id="${escape(id)}" name="with">${others.map((o) => `<option>${escape(o.disk)}</option>`).join("")}</select>
    <button type="submit" class="danger">Replace ${escape(disk)}…</button></form>`;
}

export function hostPage(snapshot, name) {
  const host = snapshot.hosts.find((h) => h.name === name);
  if (host === undefined) return `<h1>Host ${escape(name)}</h1><p class="error">no such host in the cluster</p>`;
  const serves = snapshot.volumes.filter((v) => v.primary?.host === name).map((v) => link("volume", v.name));
  const disks = host.diskViews
    .map(
      (d) => `<li>${escape(d.disk)} ${badge(d.state)} <span class="muted">${escape(d.path)}</span>
        <button type="button" data-action="identify" data-host="${escape(name)}" data-disk="${escape(d.disk)}">Identify ${escape(d.disk)}</button>
        ${replaceForm(name, d.disk, host.diskViews)}</li>`,
    )
    .join("");
  return `<h1>Host ${escape(name)} ${badge(host.state)} ${host.maintenance ? badge("maintenance") : ""}</h1>
    <p>${escape(host.address)} · primary of ${serves.join(", ") || "no volume"}</p>
    <div class="buttons">${
      host.maintenance
        ? `<button type="button" data-action="undrain" data-host="${escape(name)}">Undrain</button>`
        : `<button type="button" class="danger" data-action="drain" data-host="${escape(name)}">Drain…</button>`
    }</div>
    ${hostCard(snapshot, host)}
    <h2>Disks</h2><ul>${disks}</ul>
    <h2>Events</h2><div data-events="host=${encodeURIComponent(name)}"></div>`;
}

export function volumePage(snapshot, name) {
  const volume = snapshot.volumes.find((v) => v.name === name);
  if (volume === undefined) return `<h1>Volume ${escape(name)}</h1><p class="error">no such volume</p>`;
  // Every other host is offered: the guards say why one cannot take the volume (no copy, not in sync).
  const copyHosts = new Set(volume.copies.map((c) => c.host));
  const targets = snapshot.hosts
    .map((h) => h.name)
    .filter((h) => h !== volume.primary?.host)
    .sort((a, b) => Number(copyHosts.has(b)) - Number(copyHosts.has(a)));
  const vm = snapshot.vms.find((v) => v.volume === name);
  return `<h1>Volume ${escape(name)} ${badge(volume.health)}</h1>
    <p>${bytes(volume.sizeBytes)} · primary ${volume.primary ? `${link("host", volume.primary.host)} (epoch ${volume.primary.epoch})` : "none"}${vm ? ` · disk of VM ${link("vm", vm.name)}` : ""}</p>
    <h2>Copies</h2>
    <ul class="copies">${volume.copies
      .map((c) => copyChip(volume, c).replace(link("volume", volume.name), `${link("host", c.host)}/${escape(c.disk)}`))
      .join("")}</ul>
    <h2>Switchover</h2>
    <form class="inline-form" data-action="switchover" data-volume="${escape(name)}">
      <label for="switchover-to">to host</label>
      <select id="switchover-to" name="to">${targets.map((h) => `<option>${escape(h)}</option>`).join("")}</select>
      <button type="submit" class="danger">Switch over…</button>
    </form>
    <h2>Events</h2><div data-events="volume=${encodeURIComponent(name)}"></div>`;
}

export function vmPage(snapshot, name) {
  const vm = snapshot.vms.find((v) => v.name === name);
  if (vm === undefined) return `<h1>VM ${escape(name)}</h1><p class="error">no such VM</p>`;
  const button = (action, label, danger) =>
    `<button type="button" ${danger ? 'class="danger"' : ""} data-action="vm" data-verb="${action}" data-vm="${escape(name)}">${label}</button>`;
  return `<h1>VM ${escape(name)} ${badge(vm.state)}</h1>
    <dl class="facts">
      <dt>runs on</dt><dd data-field="host">${vm.host ? link("host", vm.host) : "no host"}</dd>
      <dt>wanted</dt><dd>${escape(vm.desired)}</dd>
      <dt>disk</dt><dd>${link("volume", vm.volume)}</dd>
      <dt>size</dt><dd>${vm.vcpus} vCPU, ${vm.memoryMiB} MiB</dd>
      <dt>restarts / relocations</dt><dd>${vm.restarts} / ${vm.relocations}</dd>
      ${vm.reason ? `<dt>reason</dt><dd>${escape(vm.reason)}</dd>` : ""}
    </dl>
    <div class="buttons">${button("start", "Start")}${button("stop", "Stop…", true)}${button("restart", "Restart…", true)}</div>
    <h2>Events</h2><div data-events="vm=${encodeURIComponent(name)}"></div>`;
}

export function eventsPage() {
  return `<h1>Events</h1>
    <form class="inline-form" id="event-filter">
      <label for="filter-host">host</label><input id="filter-host" name="host" size="10" />
      <label for="filter-volume">volume</label><input id="filter-volume" name="volume" size="10" />
      <label for="filter-vm">VM</label><input id="filter-vm" name="vm" size="10" />
      <button type="submit">Filter</button>
    </form>
    <div data-events="" data-live="true"></div>`;
}

export function tasksPage(snapshot, tasks) {
  const resyncs = snapshot.volumes.flatMap((v) =>
    v.copies
      .filter((c) => c.resync !== null || c.state === "resyncing")
      .map(
        (c) =>
          `<li>${c.resync ? "resync" : "rebuild"} of ${link("volume", v.name)} on ${link("host", c.host)}/${escape(c.disk)} ${c.resync ? bar(c.resync.percent, `resync of ${v.name}`) : ""}</li>`,
      ),
  );
  const list = tasks
    .map(
      (
        t,
      ) => `<li class="task ${escape(t.state)}" data-task="${escape(t.id)}"><strong>${escape(t.kind)}</strong> of ${escape(t.target)} by ${escape(t.actor)} ${badge(t.state)}
        <div class="summary">${escape(t.summary)}</div>
        <details><summary>log (${t.lines.length} lines)</summary><pre>${escape(t.lines.join("\n"))}</pre></details></li>`,
    )
    .join("");
  return `<h1>Tasks</h1>
    <h2>In the cluster now</h2>
    <ul>${resyncs.join("") || '<li class="muted">no resync or rebuild under way</li>'}</ul>
    ${migrations(snapshot)}
    <h2>Started from the dashboard on ${escape(snapshot.servedBy)}</h2>
    <ul class="tasks">${list || '<li class="muted">none yet</li>'}</ul>`;
}
