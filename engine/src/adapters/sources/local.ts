// The `local` source: an adapter directory read in place, allowed only under the configured --adapter-local-roots.
// Paths are canonicalised (realpath) before the check, so `..` and symlinks cannot escape; nothing is copied or cached.

import { readdir, realpath, stat } from "node:fs/promises";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { AdapterAccessError, NotFoundError, ValidationError } from "../../errors.js";
import type { AdapterSource, FetchedAdapter, SourceLogger } from "./types.js";

/** Deepest sub-directory level walked inside an adapter directory. */
const MAX_DEPTH = 4;

function inside(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

export class LocalSource implements AdapterSource {
  readonly name = "local" as const;
  private realRoots?: Promise<string[]>;

  constructor(
    /** The allow-list, as configured (absolute or relative to the working directory). */
    private readonly roots: readonly string[],
    private readonly log: SourceLogger,
  ) {
    if (roots.length === 0) throw new Error("local adapter source needs at least one root (--adapter-local-roots)");
  }

  async checkAccess(id: string): Promise<void> {
    await this.locate(id);
  }

  async fetch(id: string): Promise<FetchedAdapter> {
    const started = Date.now();
    const dir = await this.locate(id);
    const bytes = await this.checkContents(id, dir, await this.allowedRoots(), 0);
    const ms = Date.now() - started;
    return {
      source: "local",
      id,
      dir,
      cacheKey: `local:${dir}`,
      bytes,
      fromCache: false,
      timings: { resolveMs: ms, downloadMs: 0, totalMs: ms },
      release: () => undefined,
    };
  }

  private allowedRoots(): Promise<string[]> {
    this.realRoots ??= (async () => {
      const out: string[] = [];
      for (const r of this.roots) {
        try {
          out.push(await realpath(resolve(r)));
        } catch (err) {
          this.log.warn({ root: r, err: (err as Error).message }, "local adapter root does not exist; adapters under it will not be found");
          out.push(resolve(r));
        }
      }
      return out;
    })();
    return this.realRoots;
  }

  private refuse(id: string, why: string, roots: string[]): AdapterAccessError {
    return new AdapterAccessError(
      "forbidden",
      `local adapter "${id}" ${why}; only directories under ${roots.map((r) => `"${r}"`).join(", ")} may be read (set --adapter-local-roots to allow more)`,
    );
  }

  /** The canonical directory of adapter `id`: absolute, or relative to the roots (the first that has it). */
  async locate(id: string): Promise<string> {
    if (id === "" || id.includes("\0")) throw new ValidationError(`local adapter id "${id.replace(/\0/g, "\\0")}" is not a path`, "adapter_id");
    const roots = await this.allowedRoots();
    const configured = this.roots.map((r) => resolve(r));
    const candidates = isAbsolute(id) ? [resolve(id)] : configured.map((r) => resolve(r, id));
    let missing = 0;
    for (const candidate of candidates) {
      // Lexical check first, so paths outside the roots are refused without revealing whether they exist.
      if (!configured.some((r) => inside(candidate, r)) && !roots.some((r) => inside(candidate, r))) {
        throw this.refuse(id, `resolves to "${candidate}", outside the allowed roots`, roots);
      }
      let real: string;
      try {
        real = await realpath(candidate);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENOTDIR") {
          missing++;
          continue;
        }
        throw err;
      }
      if (!roots.some((r) => inside(real, r))) {
        throw this.refuse(id, `leads through a symlink to "${real}", outside the allowed roots`, roots);
      }
      if (!(await stat(real)).isDirectory()) {
        throw new NotFoundError(`local adapter "${id}" is "${real}", a file: name the adapter's directory (the one holding adapter_config.json)`, "adapter_id");
      }
      return real;
    }
    throw new NotFoundError(
      `local adapter "${id}" not found${missing > 1 ? ` under any of ${configured.map((r) => `"${r}"`).join(", ")}` : ` at "${candidates[0]}"`}`,
      "adapter_id",
    );
  }

  /** Every file inside must also stay inside the roots (a symlinked weight file could point anywhere); returns total bytes. */
  private async checkContents(id: string, dir: string, roots: string[], depth: number): Promise<number> {
    let bytes = 0;
    for (const name of await readdir(dir)) {
      const p = join(dir, name);
      const real = await realpath(p).catch(() => undefined);
      if (real === undefined) continue;
      if (!roots.some((r) => inside(real, r))) {
        throw this.refuse(id, `contains "${name}", a symlink to "${real}" outside the allowed roots`, roots);
      }
      const st = await stat(real);
      if (st.isFile()) bytes += st.size;
      else if (st.isDirectory() && depth < MAX_DEPTH) bytes += await this.checkContents(id, p, roots, depth + 1);
    }
    return bytes;
  }
}
