// The long jobs the dashboard started on this agent (a drain, a switchover): each runs in the
// background, its progress lines and outcome kept here and pushed to the live streams, so the page
// that asked need not wait on one HTTP request. Only the newest maxTasks are kept, each with at most
// maxLinesPerTask lines. Resyncs, rebuilds and added copies are the cluster's own jobs: the dashboard
// follows them in the snapshot (the copies' progress), not here.

import { randomBytes } from "node:crypto";
import { errorMessage } from "../core/errors.js";

export type TaskState = "running" | "done" | "failed";

export interface DashboardTask {
  readonly id: string;
  /** "drain", "switchover". */
  readonly kind: string;
  /** What it acts on: "host node1", "volume data1". */
  readonly target: string;
  readonly actor: string;
  readonly startedAt: string;
  state: TaskState;
  endedAt: string | null;
  /** The outcome in words once it ended; the latest line while it runs. */
  summary: string;
  readonly lines: string[];
}

const MAX_TASKS = 50;
const MAX_LINES_PER_TASK = 200;

export class DashboardTasks {
  private readonly tasks: DashboardTask[] = [];

  constructor(private readonly onChange: (task: DashboardTask) => void) {}

  /** The newest first. */
  list(): readonly DashboardTask[] {
    return [...this.tasks].reverse();
  }

  /**
   * Starts `job` in the background as a task and returns it at once. `job` reports lines through its
   * argument and resolves with its outcome in words (ok: whether it did all it set out to).
   */
  start(
    kind: string,
    target: string,
    actor: string,
    job: (line: (text: string) => void) => Promise<{ ok: boolean; summary: string }>,
  ): DashboardTask {
    const task: DashboardTask = {
      id: `${Date.now()}-${randomBytes(3).toString("hex")}`,
      kind,
      target,
      actor,
      startedAt: new Date().toISOString(),
      state: "running",
      endedAt: null,
      summary: "started",
      lines: [],
    };
    this.tasks.push(task);
    if (this.tasks.length > MAX_TASKS) this.tasks.shift();
    const line = (text: string): void => {
      for (const one of text.split("\n").filter((part) => part.trim() !== "")) {
        task.lines.push(one);
        if (task.lines.length > MAX_LINES_PER_TASK) task.lines.shift();
        task.summary = one.trim();
      }
      this.onChange(task);
    };
    this.onChange(task);
    job(line).then(
      (outcome) => this.end(task, outcome.ok ? "done" : "failed", outcome.summary),
      (error: unknown) => this.end(task, "failed", errorMessage(error)),
    );
    return task;
  }

  private end(task: DashboardTask, state: TaskState, summary: string): void {
    task.state = state;
    task.summary = summary;
    task.endedAt = new Date().toISOString();
    this.onChange(task);
  }
}
