// The agent's copy of who may call its API: the operators on record (by their tokens' digests) and the
// certificates revoked, read from etcd every few seconds. Between reads the last copy holds, so a
// revocation reaches every agent within one period; with etcd unreachable the copy stays as it was
// (its tokens are etcd's too, so nothing revoked gains anything it could do in etcd).

import { listOperators } from "../cluster/operators.js";
import { revokedSerials } from "../cluster/revocations.js";
import type { ClusterStore } from "../cluster/store.js";
import { errorMessage } from "../core/errors.js";
import type { Caller } from "../security/pki.js";

export const OPERATOR_REFRESH_MS = 3_000;

export class OperatorCache {
  private byDigest = new Map<string, Caller>();
  private revokedSet = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  /** Called after each read that found revocations (live connections of a revoked certificate end). */
  onRevocations: (() => void) | undefined;

  constructor(
    private readonly store: ClusterStore,
    private readonly log: (line: string) => void,
  ) {}

  /** Reads the operators and revocations once; logs a failure once until it changes. */
  async refresh(): Promise<void> {
    try {
      const operators = await listOperators(this.store);
      this.byDigest = new Map(
        operators.map((record) => [record.tokenSha256, { name: record.name, role: record.role }]),
      );
      this.revokedSet = await revokedSerials(this.store);
      this.lastError = undefined;
      if (this.revokedSet.size > 0) this.onRevocations?.();
    } catch (error) {
      const message = errorMessage(error);
      if (message !== this.lastError) this.log(`operators: cannot read them (keeping the last copy): ${message}`);
      this.lastError = message;
    }
  }

  start(): void {
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), OPERATOR_REFRESH_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  operatorByDigest = (digest: string): Caller | undefined => this.byDigest.get(digest);

  revoked = (serial: string): boolean => this.revokedSet.has(serial.toLowerCase());
}
