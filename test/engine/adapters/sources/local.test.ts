// The local source's allow-list: canonical paths under --adapter-local-roots only; `..` and symlink escapes refused.
// Works on temp directories; nothing is downloaded.

import { mkdir, realpath, rm, symlink, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdapterAccessError, NotFoundError, ValidationError } from "../../../../engine/src/errors.js";
import { LocalSource } from "../../../../engine/src/adapters/sources/local.js";
import { errorOf, memoryLog, tempDir } from "./setup.js";

let base: string;
let root: string;
let root2: string;
let outside: string;
let src: LocalSource;

async function adapterAt(dir: string, r = 4): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "adapter_config.json"), JSON.stringify({ r }));
  await writeFile(join(dir, "adapter_model.safetensors"), Buffer.alloc(64));
}

beforeAll(async () => {
  base = await realpath(await tempDir("local"));
  root = join(base, "root");
  root2 = join(base, "root2");
  outside = join(base, "outside");
  await adapterAt(join(root, "a"));
  await adapterAt(join(root2, "b"), 8);
  await adapterAt(join(outside, "secret"));
  await symlink(join(outside, "secret"), join(root, "escape"));
  await symlink(join(root, "a"), join(root, "alias"));
  await adapterAt(join(root, "sneaky"));
  await symlink(join(outside, "secret", "adapter_model.safetensors"), join(root, "sneaky", "extra.safetensors"));
  await writeFile(join(root, "file.txt"), "not a dir");
  // A root given through a symlink is canonicalised too.
  await symlink(root2, join(base, "root2-link"));
  src = new LocalSource([root, join(base, "root2-link")], memoryLog().logger);
});
afterAll(async () => {
  await rm(base, { recursive: true, force: true });
});

describe("local source", () => {
  it("serves a directory under a root, by absolute path or relative to the roots, in place", async () => {
    const a = await src.fetch(join(root, "a"));
    expect(a.dir).toBe(join(root, "a"));
    expect(a.cacheKey).toBe(`local:${join(root, "a")}`);
    expect(a.bytes).toBe(64 + JSON.stringify({ r: 4 }).length);
    expect(a.fromCache).toBe(false);
    expect((await src.fetch("a")).dir).toBe(join(root, "a"));
    expect((await src.fetch("b")).dir).toBe(join(root2, "b"));
    expect((await src.fetch(join(base, "root2-link", "b"))).dir).toBe(join(root2, "b"));
    // A symlink that stays inside the roots is fine; the canonical path is what is returned.
    expect((await src.fetch(join(root, "alias"))).dir).toBe(join(root, "a"));
    await src.checkAccess(join(root, "a"));
  });

  it("refuses `..` escapes, naming the path and the allowed roots", async () => {
    for (const id of [join(root, "..", "outside", "secret"), "../outside/secret", `a/../../outside/secret`]) {
      const e = await errorOf(src.checkAccess(id));
      expect(e).toBeInstanceOf(AdapterAccessError);
      expect(e.kind).toBe("forbidden");
      expect(e.message).toContain(id);
      expect(e.message).toContain(root);
      expect(e.message).toContain("--adapter-local-roots");
    }
  });

  it("refuses an absolute path outside the roots, existing or not", async () => {
    expect((await errorOf(src.fetch(join(outside, "secret")))).kind).toBe("forbidden");
    expect((await errorOf(src.fetch("/etc"))).kind).toBe("forbidden");
    expect((await errorOf(src.fetch("/no/such/place"))).kind).toBe("forbidden");
  });

  it("refuses a symlink out of the roots, and an adapter dir holding a file symlinked out of them", async () => {
    expect((await errorOf(src.checkAccess(join(root, "escape")))).kind).toBe("forbidden");
    const e = await errorOf(src.fetch(join(root, "escape")));
    expect(e.kind).toBe("forbidden");
    expect(e.message).toContain(join(outside, "secret"));
    await src.checkAccess(join(root, "sneaky"));
    const inner = await errorOf(src.fetch(join(root, "sneaky")));
    expect(inner.kind).toBe("forbidden");
    expect(inner.message).toContain("extra.safetensors");
  });

  it("missing → 404, a file → 404 with a hint, nonsense → 400", async () => {
    expect(await errorOf(src.fetch(join(root, "missing")))).toBeInstanceOf(NotFoundError);
    expect(await errorOf(src.fetch("missing"))).toBeInstanceOf(NotFoundError);
    const file = await errorOf(src.fetch(join(root, "file.txt")));
    expect(file).toBeInstanceOf(NotFoundError);
    expect(file.message).toContain("adapter_config.json");
    expect(await errorOf(src.fetch(""))).toBeInstanceOf(ValidationError);
    expect(await errorOf(src.fetch("a\0b"))).toBeInstanceOf(ValidationError);
  });

  it("a relative id is looked up under each root, never above them", async () => {
    const rel = relative(root, join(outside, "secret"));
    expect(rel.startsWith("..")).toBe(true);
    expect((await errorOf(src.fetch(rel))).kind).toBe("forbidden");
  });
});
