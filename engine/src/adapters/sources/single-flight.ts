// Coalescing of concurrent identical work (downloads, access checks) into one promise per key.
// Knows nothing of what the work is; a failed run is forgotten at once so the next caller starts afresh.

import { createHash } from "node:crypto";

export class SingleFlight<T> {
  private readonly inflight = new Map<string, Promise<T>>();
  private readonly settled = new Map<string, { value: T; at: number }>();

  /**
   * The running promise for `key`, or a value that settled successfully less than `reuseMs` ago, or a new run of `fn`.
   * `reuseMs = 0` shares only work still in flight, and drops the settled value: after a refused re-check
   * (an access check, reuse 0), no later caller can reuse the success it replaced.
   */
  run(key: string, fn: () => Promise<T>, reuseMs = 0): Promise<T> {
    const running = this.inflight.get(key);
    if (running !== undefined) return running;
    const done = this.settled.get(key);
    if (done !== undefined) {
      if (Date.now() - done.at < reuseMs) return Promise.resolve(done.value);
      this.settled.delete(key);
    }
    const p = fn().then(
      (value) => {
        this.inflight.delete(key);
        this.settled.set(key, { value, at: Date.now() });
        this.prune();
        return value;
      },
      (err: unknown) => {
        this.inflight.delete(key);
        throw err;
      },
    );
    this.inflight.set(key, p);
    return p;
  }

  private prune(): void {
    if (this.settled.size <= 4096) return;
    const oldest = [...this.settled.entries()].sort((a, b) => a[1].at - b[1].at).slice(0, this.settled.size - 2048);
    for (const [k] of oldest) this.settled.delete(k);
  }
}

/**
 * A key part that tells tokens apart without keeping them: a SHA-256 prefix, in memory only, never logged.
 * `undefined` (no token) maps to "anon".
 */
export function tokenKey(token: string | undefined): string {
  return token === undefined ? "anon" : createHash("sha256").update(token).digest("hex").slice(0, 32);
}
