// The operator's text for the cluster commands: `haven status`, `host list`, `volume list`, `volume show`
// and `events`. Pure: the input is the view of src/cluster/cluster-view.ts (or an event record), the
// output a string, so the same records always print the same way and tests need no etcd.
//
// Names, details and messages come from etcd, where any process with access can write them: control
// characters are replaced so that they cannot move the cursor or recolor the terminal.

import type { VmListEntry } from "../cluster/cluster-view.js";
import type { ClusterSummary, ClusterView, CopyView, DiskView, HostView, VolumeView } from "../cluster/cluster-view.js";
import type { EventRecord, LinkHealth } from "../cluster/schema.js";
import { formatBytes } from "../util/units.js";
import { DEFAULT_MIN_COLUMN_WIDTH, cutToWidth, fitColumnWidths } from "./table-fit.js";

export interface ClusterRenderOptions {
  /** ANSI colors for states (green: fine, yellow: on its way or reduced, red: needs the operator). */
  readonly color?: boolean;
  /** The width tables must fit (src/cli/table-fit.ts); none: every cell whole. */
  readonly width?: number;
}

type Tone = "good" | "busy" | "bad";

const ANSI: Record<Tone, string> = { good: "\x1b[32m", busy: "\x1b[33m", bad: "\x1b[31m" };
const ANSI_RESET = "\x1b[0m";
const COLUMN_GAP = "  ";
const LABEL_COLUMNS = 12;

const TONES: Record<string, Tone> = {
  alive: "good",
  dead: "bad",
  unknown: "bad",
  healthy: "good",
  degraded: "busy",
  down: "bad",
  "in-sync": "good",
  "out-of-sync": "bad",
  unrecorded: "busy",
  resyncing: "busy",
  suspected: "busy",
  ok: "good",
  online: "good",
  spare: "good",
  failing: "busy",
  new: "busy",
  failed: "bad",
  missing: "bad",
  foreign: "bad",
  maintenance: "busy",
};

function printable<T>(value: T): T {
  return JSON.parse(JSON.stringify(value), (_key, field: unknown) =>
    // eslint-disable-next-line no-control-regex
    typeof field === "string" ? field.replace(/[\x00-\x1f\x7f-\x9f]/g, "?") : field,
  ) as T;
}

/** A cell; `toned` cells are colored by their word (see TONES). */
interface Cell {
  readonly text: string;
  readonly toned?: boolean;
}

/** How much a column is needed (higher: more), and whether it may only be shown whole or left out. */
interface ColumnRank {
  readonly rank: number;
  readonly whole?: boolean;
}

/**
 * A table with its columns aligned. When `options.width` is given the table fits it, the least needed
 * columns (by `ranks`) giving way first.
 */
function table(
  headings: readonly string[],
  rows: readonly (readonly Cell[])[],
  options: ClusterRenderOptions,
  ranks?: readonly ColumnRank[],
): string[] {
  const natural = headings.map((heading, column) =>
    Math.max(heading.length, ...rows.map((row) => row[column]!.text.length)),
  );
  const widths =
    options.width === undefined || ranks === undefined
      ? natural
      : fitColumnWidths(
          natural.map((width, column) => ({
            width,
            rank: ranks[column]!.rank,
            min: ranks[column]!.whole === true ? width : DEFAULT_MIN_COLUMN_WIDTH,
          })),
          options.width,
          COLUMN_GAP.length,
        );
  const line = (cells: readonly Cell[]): string =>
    cells
      .flatMap((cell, column) => {
        const width = widths[column]!;
        if (width === 0) return [];
        const text = cutToWidth(cell.text, width);
        const padding = " ".repeat(width - text.length);
        const tone = cell.toned ? TONES[text] : undefined;
        // Color the word, not the padding, so that columns line up with or without escapes.
        const shown = options.color && tone !== undefined ? `${ANSI[tone]}${text}${ANSI_RESET}` : text;
        return [`${shown}${padding}`];
      })
      .join(COLUMN_GAP)
      .trimEnd();
  return [line(headings.map((text) => ({ text }))), ...rows.map(line)];
}

function ranked(ranks: readonly number[]): ColumnRank[] {
  return ranks.map((rank) => ({ rank }));
}

function paint(text: string, options: ClusterRenderOptions): string {
  const tone = TONES[text];
  return options.color && tone !== undefined ? `${ANSI[tone]}${text}${ANSI_RESET}` : text;
}

function field(label: string, value: string): string {
  return `${label.padEnd(LABEL_COLUMNS)}${value}`;
}

function plural(count: number, word: string): string {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

/** "3 hosts (2 alive, 1 dead), 2 volumes (1 healthy, 1 down)"; only the counts that are not zero. */
export function renderSummary(summary: ClusterSummary): string {
  const part = (count: number, word: string, details: [number, string][]): string => {
    const shown = details.filter(([n]) => n > 0).map(([n, what]) => `${n} ${what}`);
    return `${plural(count, word)}${shown.length > 0 ? ` (${shown.join(", ")})` : ""}`;
  };
  const hosts = part(summary.hosts, "host", [
    [summary.aliveHosts, "alive"],
    [summary.hosts - summary.aliveHosts, "dead"],
  ]);
  const volumes = part(summary.volumes, "volume", [
    [summary.healthyVolumes, "healthy"],
    [summary.degradedVolumes, "degraded"],
    [summary.downVolumes, "down"],
  ]);
  return `${hosts}, ${volumes}`;
}

function disks(host: HostView): string {
  if (host.disks.length === 0) return "(no disks)";
  return host.disks
    .map((disk) => `${disk.name} ${formatBytes(disk.usedBytes)}/${formatBytes(disk.capacityBytes)}`)
    .join(", ");
}

function primaryCell(volume: VolumeView): string {
  const { primary } = volume;
  if (primary === null) return "-";
  const state =
    primary.hostState !== "alive" ? `, ${primary.hostState}` : primary.suspectedBy.length > 0 ? ", suspected" : "";
  return `${primary.host} (epoch ${primary.epoch}${state})`;
}

/** "alive", or "alive, suspected: h1 has its link to it down (3 heartbeats missed)" when a copy's host says so. */
function primaryState(primary: NonNullable<VolumeView["primary"]>, options: ClusterRenderOptions): string {
  const state = paint(primary.hostState, options);
  if (primary.hostState !== "alive" || primary.suspectedBy.length === 0) return state;
  const verdicts = primary.suspectedBy.map((each) => `${each.host} has its link to it down (${each.detail})`);
  return `${state}, ${paint("suspected", options)}: ${verdicts.join("; ")}`;
}

/** "resyncing  42% [########............] 80.0 MiB/s, 12 s left": a picture, then the numbers. */
export function resyncText(resync: NonNullable<CopyView["resync"]>): string {
  const width = 20;
  const filled = Math.round((resync.percent / 100) * width);
  const eta = resync.etaSeconds === null ? "" : `, ${resync.etaSeconds} s left`;
  return (
    `resyncing ${resync.percent.toFixed(0).padStart(3)}% [${"#".repeat(filled)}${".".repeat(width - filled)}] ` +
    `${formatBytes(resync.bytesPerSecond)}/s${eta}`
  );
}

/** One copy in a volume's row: its host (and disk, when the host holds two copies: a local mirror) and state. */
function copyState(copy: CopyView, copies: readonly CopyView[]): string {
  const state = copy.resync === null ? copy.state : `resyncing ${copy.resync.percent.toFixed(0)}%`;
  const mirrored = copies.filter((other) => other.host === copy.host).length > 1;
  const where = mirrored ? `${copy.host}/${copy.disk}` : copy.host;
  return `${where} ${state}${copy.hostState === "alive" ? "" : ` (host ${copy.hostState})`}`;
}

/** "ok", the first problem (and how many more), or "-" for a host without a check (dead, or not yet). */
function healthText(host: HostView): string {
  if (host.health === null) return "-";
  const [first, ...rest] = host.health.problems;
  if (first === undefined) return "ok";
  return rest.length > 0 ? `${first} (+${rest.length} more)` : first;
}

/** "h2 up 0.4 ms, h3 DOWN": each replication link's heartbeat, "-" without a check or a link. */
function linksText(host: HostView): string {
  const links = host.health?.links ?? [];
  if (links.length === 0) return "-";
  return links.map(linkText).join(", ");
}

function linkText(link: LinkHealth): string {
  if (link.up) return `${link.peer} up${link.rttMs === null ? "" : ` ${link.rttMs.toFixed(1)} ms`}`;
  return link.starting ? `${link.peer} starting` : `${link.peer} DOWN`;
}

function hostRows(hosts: readonly HostView[]): Cell[][] {
  return hosts.map((host) => [
    { text: host.name },
    { text: host.maintenance && host.state === "alive" ? "maintenance" : host.state, toned: true },
    { text: host.address },
    { text: String(host.nbdPort) },
    { text: String(host.copies) },
    { text: disks(host) },
    { text: linksText(host) },
    { text: healthText(host), toned: true },
  ]);
}

const HOST_HEADINGS = ["HOST", "STATE", "ADDRESS", "NBD PORT", "COPIES", "DISKS (USED/CAPACITY)", "LINKS", "HEALTH"];
/** What gives way first on a narrow terminal: the links, then the disks; the name and state stay. */
const HOST_RANKS = ranked([9, 8, 6, 4, 5, 3, 2, 7]);

function volumeRows(volumes: readonly VolumeView[]): Cell[][] {
  return volumes.map((volume) => [
    { text: volume.name },
    { text: formatBytes(volume.sizeBytes) },
    { text: volume.health, toned: true },
    { text: primaryCell(volume) },
    { text: volume.copies.map((copy) => copyState(copy, volume.copies)).join(", ") },
    { text: volume.nbd ?? "-" },
  ]);
}

const VOLUME_HEADINGS = ["VOLUME", "SIZE", "HEALTH", "PRIMARY", "COPIES", "NBD"];
/** The copies give way first ('haven volume show' has each); a cut NBD URI would mislead: whole or none. */
const VOLUME_RANKS: ColumnRank[] = [...ranked([9, 5, 8, 6, 3]), { rank: 7, whole: true }];

export function renderHostList(untrusted: readonly HostView[], options: ClusterRenderOptions = {}): string {
  const hosts = printable(untrusted);
  if (hosts.length === 0) return "no hosts have joined the cluster (start 'haven agent' on each host)\n";
  return `${table(HOST_HEADINGS, hostRows(hosts), options, HOST_RANKS).join("\n")}\n`;
}

export function renderVolumeList(untrusted: readonly VolumeView[], options: ClusterRenderOptions = {}): string {
  const volumes = printable(untrusted);
  if (volumes.length === 0) return "no volumes (create one with 'haven volume create NAME --size SIZE')\n";
  return `${table(VOLUME_HEADINGS, volumeRows(volumes), options, VOLUME_RANKS).join("\n")}\n`;
}

/** `haven status`: the summary line, then the hosts and the volumes. */
export function renderStatus(untrusted: ClusterView, options: ClusterRenderOptions = {}): string {
  const view = printable(untrusted);
  return [
    renderSummary(view.summary),
    "",
    renderHostList(view.hosts, options).trimEnd(),
    "",
    renderVolumeList(view.volumes, options),
    ...(view.vms.length > 0 ? [renderVmTable(view.vms, options)] : []),
  ].join("\n");
}

function nbdLine(volume: VolumeView): string {
  if (volume.nbd !== null) return volume.nbd;
  if (volume.primary === null) return "(not served: the volume has no primary)";
  return `(not served: primary host ${volume.primary.host} is ${volume.primary.hostState})`;
}

/** `haven volume show`: everything about one volume, including where clients connect. */
export function renderVolume(untrusted: VolumeView, options: ClusterRenderOptions = {}): string {
  const volume = printable(untrusted);
  const { primary } = volume;
  const lines = [
    field("volume", volume.name),
    field("size", `${formatBytes(volume.sizeBytes)} (${volume.sizeBytes} bytes)`),
    field("health", paint(volume.health, options)),
    field(
      "primary",
      primary === null
        ? "-"
        : `${primary.host} (${primaryState(primary, options)}), epoch ${primary.epoch}, since ${primary.since} ` +
            `(${primary.reason})`,
    ),
    field("nbd", nbdLine(volume)),
    field("created", volume.createdAt),
    "",
    ...table(
      ["HOST", "DISK", "HOST STATE", "RECORDED", "DETAIL", "EPOCH", "UPDATED"],
      volume.copies.map((copy) => [
        { text: copy.host },
        { text: copy.disk },
        { text: copy.hostState, toned: true },
        { text: copy.state, toned: true },
        { text: copy.resync !== null ? resyncText(copy.resync) : copy.detail === "" ? "-" : copy.detail },
        { text: copy.epoch === null ? "-" : String(copy.epoch) },
        { text: copy.updatedAt ?? "-" },
      ]),
      options,
      ranked([9, 8, 6, 7, 4, 5, 3]),
    ),
  ];
  return `${lines.join("\n")}\n`;
}

const EVENT_HOST_COLUMNS = 12;
const EVENT_VOLUME_COLUMNS = 12;
const EVENT_KIND_COLUMNS = 20;

export interface EventRenderOptions {
  /** Times in UTC; by default in this machine's local time. */
  readonly utc?: boolean;
}

/** "2026-12-05 21:45:03.123": an event's time in local time (or UTC), to the millisecond, or the text as stored if it is no time. */
export function eventTime(iso: string, options: EventRenderOptions = {}): string {
  const time = new Date(iso);
  if (Number.isNaN(time.getTime())) return iso;
  const two = (n: number): string => String(n).padStart(2, "0");
  const parts = options.utc
    ? [
        time.getUTCFullYear(),
        time.getUTCMonth() + 1,
        time.getUTCDate(),
        time.getUTCHours(),
        time.getUTCMinutes(),
        time.getUTCSeconds(),
        time.getUTCMilliseconds(),
      ]
    : [
        time.getFullYear(),
        time.getMonth() + 1,
        time.getDate(),
        time.getHours(),
        time.getMinutes(),
        time.getSeconds(),
        time.getMilliseconds(),
      ];
  const [year, month, day, hours, minutes, seconds, ms] = parts as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return `${year}-${two(month)}-${two(day)} ${two(hours)}:${two(minutes)}:${two(seconds)}.${String(ms).padStart(3, "0")}`;
}

/** The zone the times are in: "UTC", or the local offset at `at` ("UTC+01:00"). */
function zoneName(options: EventRenderOptions, at: Date): string {
  if (options.utc) return "UTC";
  const offset = -at.getTimezoneOffset();
  const sign = offset < 0 ? "-" : "+";
  const hours = String(Math.floor(Math.abs(offset) / 60)).padStart(2, "0");
  return `UTC${sign}${hours}:${String(Math.abs(offset) % 60).padStart(2, "0")}`;
}

const EVENT_TIME_COLUMNS = "2026-12-05 21:45:03.123".length;

/** The line above the events: the columns' names, the time's with its zone. */
export function renderEventHeader(options: EventRenderOptions = {}, now = new Date()): string {
  return [
    `TIME (${zoneName(options, now)})`.padEnd(EVENT_TIME_COLUMNS),
    "HOST".padEnd(EVENT_HOST_COLUMNS),
    "VOLUME".padEnd(EVENT_VOLUME_COLUMNS),
    "KIND".padEnd(EVENT_KIND_COLUMNS),
    "MESSAGE",
  ]
    .join(COLUMN_GAP)
    .concat("\n");
}

/** One event per line: time, host, volume, kind, message (columns padded, never cut). */
export function renderEvent(untrusted: EventRecord, options: EventRenderOptions = {}): string {
  const event = printable(untrusted);
  return [
    eventTime(event.time, options).padEnd(EVENT_TIME_COLUMNS),
    event.host.padEnd(EVENT_HOST_COLUMNS),
    (event.volume ?? "-").padEnd(EVENT_VOLUME_COLUMNS),
    event.kind.padEnd(EVENT_KIND_COLUMNS),
    event.message,
  ]
    .join(COLUMN_GAP)
    .concat("\n");
}

/** The VM table, as `vm list` and `haven status` print it. */
export function renderVmTable(entries: readonly VmListEntry[], options: ClusterRenderOptions = {}): string {
  if (entries.length === 0) return "no VMs (create one with 'haven vm create')\n";
  const rows = entries.map((e) => [
    { text: e.name },
    { text: e.state, toned: true },
    { text: e.host ?? "-" },
    { text: `${e.vcpus}${e.cpus ? `@${e.cpus}` : ""}` },
    { text: `${e.memoryMiB}M` },
    { text: e.volume },
    { text: `${e.restarts}/${e.relocations}` },
  ]);
  const headings = ["VM", "STATE", "HOST", "CPU", "MEMORY", "DISK", "RESTARTS"];
  return `${table(headings, rows, options, ranked([9, 8, 7, 4, 5, 6, 3])).join("\n")}\n`;
}

/** A bar for a share of a whole: [#####...............]. */
function bar(fraction: number, width = 20): string {
  const filled = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
}

/** `haven disk list`: one line per disk with a bar of its filesystem's use, then its copies. */
export function renderDiskList(untrusted: readonly DiskView[], options: ClusterRenderOptions = {}): string {
  const disks = printable(untrusted);
  if (disks.length === 0) return "no disks on record (each agent records its disks as it starts)\n";
  const lines: string[] = [];
  const rows = disks.map((disk): Cell[] => [
    { text: disk.host },
    { text: disk.disk },
    { text: disk.spare && disk.state === "online" ? "spare" : disk.state, toned: true },
    { text: disk.sizeBytes === 0 ? "-" : formatBytes(disk.sizeBytes) },
    {
      text:
        disk.sizeBytes === 0
          ? "-"
          : `${bar(disk.usedBytes / disk.sizeBytes)} ${Math.round((100 * disk.usedBytes) / disk.sizeBytes)}%`,
    },
    { text: disk.sizeBytes === 0 ? "-" : formatBytes(disk.freeBytes) },
    { text: formatBytes(disk.havenBytes) },
    { text: String(disk.copies.length) },
    { text: disk.identity === null ? "-" : `${disk.identity.kind} ${disk.identity.value}` },
    { text: disk.path || "-" },
  ]);
  const table_ = table(
    ["HOST", "DISK", "STATE", "SIZE", "USED", "FREE", "HAVEN", "COPIES", "IDENTITY", "PATH"],
    rows,
    options,
  );
  lines.push(table_[0]!);
  disks.forEach((disk, i) => {
    lines.push(table_[i + 1]!);
    if (disk.state !== "online" && disk.state !== "unknown") lines.push(`    ${disk.reason}`);
    if (disk.hostState !== "alive") lines.push(`    host ${disk.host} is ${disk.hostState}: the record may be stale`);
    for (const copy of disk.copies) {
      const progress = copy.resync !== null ? resyncText(copy.resync) : copy.detail;
      lines.push(
        `    ${copy.volume.padEnd(16)} ${paint(copy.state, options)}${" ".repeat(Math.max(1, 12 - copy.state.length))}` +
          `${formatBytes(copy.allocatedBytes).padStart(10)}  ${progress}`.trimEnd(),
      );
    }
  });
  const shared = disks.filter((disk) => disk.sharesFilesystemWith.length > 0);
  if (shared.length > 0) {
    lines.push("");
    const groups = new Set(
      shared.map((disk) => [`${disk.host}/${disk.disk}`, ...disk.sharesFilesystemWith].sort().join(", ")),
    );
    for (const group of groups) lines.push(`one filesystem, one free space: ${group}`);
  }
  return `${lines.join("\n")}\n`;
}
