// The printed report of bench/replication: the throughput table (one column per configuration, then
// the ratios, with PASS/FAIL where the issue sets a target), the resync table, each process's peak
// RSS and CPU, and the notes. Pure: takes the results object the benchmark collected, returns text.

const MIB = 1024 * 1024;

/** Left-aligns the first `leftColumns` columns, right-aligns the rest. */
export function table(header, rows, leftColumns = 1) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells) =>
    cells
      .map((c, i) => (i < leftColumns ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ")
      .trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
}

const fmtValue = (value, metric) => (metric === "MB/s" ? value.toFixed(1) : String(Math.round(value)));
const mib = (bytes) => `${(bytes / MIB).toFixed(bytes % MIB === 0 ? 0 : 1)} MiB`;
const mbps = (bytesPerSecond) => `${(bytesPerSecond / 1e6).toFixed(0)} MB/s`;
const secs = (seconds) => `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
const verdict = (ok) => (ok ? "PASS" : "FAIL");

/**
 * results: {
 *   meta: string, configs: [{ name, title }], ratios: [{ title, over, under, targets: {wl: min} }],
 *   workloads: [{ name, metric }],
 *   throughput: { [config]: { status, values: { [wl]: number }, cells: { [wl]: string } } },
 *   processes: [{ label, peakKib, idleKib, cpuSeconds, wallSeconds, topThreads }],
 *   resync: null | { skipped?, rounds, disk, rebuild, incremental, full, targets },
 *   ceiling: null | { skipped, workload, modes: [{ mode, config }], rounds: [{ round, [mode]: B/s }],
 *                     median: null | { [mode]: B/s } },
 *   notes: [string],
 * }
 */
export function renderReport(results) {
  const lines = [results.meta, ""];

  // ---- throughput
  const { configs, ratios, workloads, throughput } = results;
  if (configs.length > 0) {
    const header = ["workload", "metric", ...configs.map((c) => c.title), ...ratios.map((r) => r.title)];
    const rows = workloads.map((wl) => {
      const cell = (c) => {
        const r = throughput[c.name];
        if (r?.values[wl.name] !== undefined) return fmtValue(r.values[wl.name], wl.metric);
        return r?.cells[wl.name] ?? "skipped";
      };
      const ratioCell = (ratio) => {
        const a = throughput[ratio.over]?.values[wl.name];
        const b = throughput[ratio.under]?.values[wl.name];
        if (a === undefined || b === undefined) return "n/a";
        const value = a / b;
        const target = ratio.targets?.[wl.name];
        return `${value.toFixed(2)}x${target === undefined ? "" : ` ${verdict(value >= target)}`}`;
      };
      return [wl.name, wl.metric, ...configs.map(cell), ...ratios.map(ratioCell)];
    });
    lines.push(...table(header, rows, 2), "");
    const targeted = ratios.filter((r) => r.targets);
    if (targeted.length > 0) {
      const t = Object.entries(targeted[0].targets)
        .map(([wl, min]) => `>= ${min.toFixed(2)}x on ${wl}`)
        .join(", ");
      lines.push(`targets: two copies (${targeted.map((r) => r.title).join(", ")}) ${t}`);
    }
    for (const r of ratios) lines.push(`  ${r.title.padEnd(11)} = ${r.legend}`);
    lines.push("");
    if (results.ceiling) lines.push(...renderCeiling(results.ceiling, results), "");

    // Where the CPU went: is the engine's event loop (main thread) the limit?
    const shown = configs.filter((c) => Object.keys(throughput[c.name]?.cpu ?? {}).length > 0);
    if (shown.length > 0) {
      const cpuRows = workloads.map((wl) => [
        wl.name,
        ...shown.map((c) => {
          const cpu = throughput[c.name].cpu[wl.name];
          if (!cpu) return "n/a";
          const server = c.name === "nbdkit" ? `${cpu.server.total}` : `${cpu.server.main}+${cpu.server.other}`;
          return cpu.replicaServer ? `${server}, rs ${cpu.replicaServer.total}` : server;
        }),
      ]);
      lines.push(
        "CPU during each workload, % of one CPU: engine main thread + other threads (libuv pool, V8);",
        "nbdkit: all threads; rs: the replica server, all threads (fio uses CPU too: 2 CPUs = 200)",
        ...table(["workload", ...shown.map((c) => c.title)], cpuRows, 1),
        "",
      );
    }
  }

  // ---- resync
  const resync = results.resync;
  if (resync?.skipped) lines.push(`resync: ${resync.skipped}`, "");
  else if (resync) {
    const header = ["resync", "bytes", "time", "rate", "ratio", "target"];
    const rows = [];
    const none = "n/a";
    const { rounds, disk, rebuild, incremental, full, targets } = resync;
    const median = rounds.length > 1 ? `, median of ${rounds.length}` : "";
    rows.push([
      `disk: fio seq write 1M, then fsync${median}`,
      disk ? mib(disk.bytes) : none,
      disk ? secs(disk.seconds) : none,
      disk ? mbps(disk.bytesPerSecond) : none,
      "",
      "",
    ]);
    const rebuildRatio = rebuild && disk ? rebuild.bytesPerSecond / disk.bytesPerSecond : undefined;
    rows.push([
      `full rebuild, local copy (${rebuild ? mib(rebuild.volumeBytes) : "?"} volume${median})`,
      rebuild ? `${mib(rebuild.allocatedBytes)} data` : none,
      rebuild ? secs(rebuild.seconds) : none,
      rebuild ? mbps(rebuild.bytesPerSecond) : none,
      rebuildRatio === undefined ? none : `${rebuildRatio.toFixed(2)}x disk`,
      `>= ${targets.rebuildVsDisk.toFixed(2)}x ${rebuildRatio === undefined ? "" : verdict(rebuildRatio >= targets.rebuildVsDisk)}`.trimEnd(),
    ]);
    rows.push([
      `incremental resync, remote copy (${incremental ? mib(incremental.dirtyBytes) : "?"} dirtied)`,
      incremental ? mib(incremental.resyncBytes) : none,
      incremental ? secs(incremental.seconds) : none,
      incremental ? mbps(incremental.resyncBytes / incremental.seconds) : none,
      "",
      "",
    ]);
    rows.push([
      `full rebuild, remote copy (${full ? mib(full.volumeBytes) : "?"} volume)`,
      full ? mib(full.resyncBytes) : none,
      full ? secs(full.seconds) : none,
      full ? mbps(full.resyncBytes / full.seconds) : none,
      "",
      "",
    ]);
    const incRatio = incremental && full ? incremental.seconds / full.seconds : undefined;
    rows.push([
      "incremental / full rebuild time",
      "",
      "",
      "",
      incRatio === undefined ? none : incRatio.toFixed(3),
      `<= ${targets.incrementalVsFull.toFixed(2)} ${incRatio === undefined ? "" : verdict(incRatio <= targets.incrementalVsFull)}`.trimEnd(),
    ]);
    lines.push(...table(header, rows, 1));
    if (rounds.length > 0) {
      const each = rounds.map((r) => `${secs(r.diskSeconds)} / ${secs(r.rebuildSeconds)} (${r.ratio.toFixed(2)}x)`);
      lines.push(`  rounds, disk / rebuild time (rebuild rate / disk rate): ${each.join(", ")}`);
    }
    lines.push(
      "  time: from the engine's log line starting the resync to the one saying it is done (the copy",
      "  flushed and marked in sync); the engine's own 'done in S s' excludes that final flush:",
    );
    for (const [label, r] of [
      ["rebuild, local", rebuild],
      ["incremental", incremental],
      ["rebuild, remote", full],
    ]) {
      if (!r) continue;
      const extra =
        r.healthyAfterRestartSeconds === undefined
          ? ""
          : `; replica server restart to healthy ${secs(r.healthyAfterRestartSeconds)}`;
      lines.push(
        `    ${label}: engine says ${r.engineSeconds.toFixed(1)} s (${r.mode}, ${r.resyncBytes} bytes)${extra}`,
      );
    }
    lines.push("");
  }

  // ---- processes
  if (results.processes.length > 0) {
    lines.push("processes (peak RSS over each process's life, RSS after start; CPU user+sys over wall time):");
    const rows = results.processes.map((p) => [
      p.label,
      p.peakKib === null ? "n/a" : `${(p.peakKib / 1024).toFixed(1)} MiB`,
      p.idleKib === null ? "" : `(${(p.idleKib / 1024).toFixed(1)} MiB)`,
      p.cpuSeconds === null ? "" : `CPU ${p.cpuSeconds.toFixed(1)} s / ${p.wallSeconds.toFixed(0)} s`,
      p.topThreads ?? "",
    ]);
    lines.push(...table(["process", "peak RSS", "start", "CPU", "CPU by thread"], rows, 1).map((l) => `  ${l}`), "");
  }

  if (results.notes.length > 0) lines.push("notes:", ...results.notes.map((n) => `  ${n}`), "");
  return `${lines.join("\n").trimEnd()}\n`;
}

/**
 * Part 3: the ratios a minimal C pipeline reaches on this machine for the same workload, next to the
 * engine's; a target above the pipeline's ratio is out of reach here for any engine.
 */
function renderCeiling(ceiling, { configs, ratios, throughput }) {
  const { workload, modes, rounds, median } = ceiling;
  const head = `ceiling for ${workload} on this machine (part 3, bench/reference/copy-pipeline.c)`;
  if (ceiling.skipped) return [`${head}: ${ceiling.skipped}`];
  if (!median) return [`${head}: no result (see the notes)`];
  const one = modes[0];
  const pipelineRatio = (mode) => median[mode] / median[one.mode];
  // Part 1 keeps MB/s (10^6 bytes per second); the pipeline reports bytes per second.
  const engineValue = (config) => {
    const value = throughput[config]?.values[workload];
    return value === undefined ? undefined : value * 1e6;
  };
  const engineOne = engineValue(one.config);
  const rows = modes.map(({ mode, config }, i) => {
    const title = configs.find((c) => c.name === config)?.title ?? config;
    const engine = engineValue(config);
    if (i === 0) return [title, mbps(median[mode]), "", engine === undefined ? "n/a" : mbps(engine), "", ""];
    const engineRatio = engine !== undefined && engineOne !== undefined ? engine / engineOne : undefined;
    return [
      title,
      mbps(median[mode]),
      `${pipelineRatio(mode).toFixed(2)}x`,
      engine === undefined ? "n/a" : mbps(engine),
      engineRatio === undefined ? "n/a" : `${engineRatio.toFixed(2)}x`,
      engineRatio === undefined ? "n/a" : `${Math.round((100 * engineRatio) / pipelineRatio(mode))}%`,
    ];
  });
  const lines = [
    `${head}: the same bytes`,
    `moved with no protocol, no metadata and no checks; median of ${rounds.length} round${rounds.length === 1 ? "" : "s"}; ratios against one copy:`,
    ...table(["copies", "pipeline", "ratio", "engine", "ratio", "engine/pipeline"], rows, 1).map((l) => `  ${l}`),
    `  rounds (${modes.map((m) => m.mode).join(" / ")}, MB/s): ${rounds
      .map((r) => modes.map((m) => (r[m.mode] / 1e6).toFixed(0)).join(" / "))
      .join(", ")}`,
  ];
  for (const ratio of ratios.filter((r) => r.targets?.[workload] !== undefined)) {
    const mode = modes.find((m) => m.config === ratio.over);
    if (!mode) continue;
    const reachable = pipelineRatio(mode.mode);
    const target = ratio.targets[workload];
    if (reachable < target)
      lines.push(
        `  ${ratio.title} target ${target.toFixed(2)}x is above what the pipeline reaches here (${reachable.toFixed(2)}x): out of reach on this machine`,
      );
  }
  return lines;
}
