// Owns the checks on docker/Dockerfile and docker/Dockerfile.cuda: the build steps are the README's set-up
// commands, and the runtime stage's user, volume, health check, environment and entrypoint configure the server as
// intended. It does not build images (no container engine is assumed); manifests.test.ts owns compose and k8s.
import fs from "node:fs";
import path from "node:path";

import { describe, expect, it } from "vitest";

import { buildCommand, parseConfig, REPO_ROOT } from "../../server/src/config.js";

interface Instruction {
  op: string;
  args: string;
  flags: string[];
}
interface Stage {
  from: string;
  name?: string;
  steps: Instruction[];
}

/** Splits a Dockerfile into stages of instructions (comments dropped, continuation lines joined). */
function parseDockerfile(text: string): { args: Map<string, string>; stages: Stage[] } {
  const lines: string[] = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw)) continue;
    const l = raw.replace(/\s+$/, "");
    if (l.endsWith("\\")) cur += l.slice(0, -1) + " ";
    else {
      cur += l;
      if (cur.trim()) lines.push(cur.trim());
      cur = "";
    }
  }
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    const m = /^(\w+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`unparsed Dockerfile line: ${line}`);
    const op = m[1].toUpperCase();
    let rest = m[2];
    const flags: string[] = [];
    while (/^--\S+/.test(rest)) {
      const f = /^(--\S+)\s*(.*)$/.exec(rest)!;
      flags.push(f[1]);
      rest = f[2];
    }
    if (op === "FROM") {
      const [image, as, name] = rest.split(/\s+/);
      stages.push({ from: image, name: as?.toUpperCase() === "AS" ? name : undefined, steps: [] });
    } else if (stages.length === 0 && op === "ARG") {
      const [k, v] = rest.split("=");
      args.set(k, v ?? "");
    } else {
      if (stages.length === 0) throw new Error(`${op} before FROM`);
      stages.at(-1)!.steps.push({ op, args: rest, flags });
    }
  }
  return { args, stages };
}

/** ENV instructions as a map (KEY=value pairs; quotes removed). */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const s of stage.steps.filter((x) => x.op === "ENV"))
    for (const m of s.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]] = m[2].replace(/^"|"$/g, "");
  return env;
}

const commandsOf = (run: string) => run.split(/&&|;/).map((c) => c.trim()).filter(Boolean);
const program = (cmd: string) => cmd.split(/\s+/)[0];
/** Programs that build the project; every use of them must be one of the README's set-up commands. */
const BUILD_TOOLS = new Set(["npm", "npx", "node-gyp", "tsc", "node", "make", "cmake", "nvcc", "g++", "gcc", "yarn", "pnpm", "git"]);
/** What else a RUN may do: install the toolchain (build stages only), and make the volume's directory. */
const SETUP_TOOLS = { build: new Set(["apt-get", "rm"]), runtime: new Set(["mkdir", "chown"]) };

/** The set-up commands: what .ci/run (the README's commands, run on a clean clone) runs before the tests. */
function setupCommands(): string[] {
  const cmds = fs.readFileSync(path.join(REPO_ROOT, ".ci", "run"), "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#") && !/^(set|cd)\b/.test(l));
  const firstTest = cmds.findIndex((c) => /^npm (test|run test)\b/.test(c));
  expect(firstTest, ".ci/run runs npm test").toBeGreaterThan(0);
  return cmds.slice(0, firstTest);
}

/** Command lines in the README's shell code blocks (a leading `$ ` prompt removed). */
function readmeCommands(readme: string): string[] {
  const out: string[] = [];
  for (const block of readme.matchAll(/```(?:sh|bash|shell|console)?\n([\s\S]*?)```/g))
    for (const l of block[1].split("\n")) {
      const c = l.trim().replace(/^\$\s+/, "");
      if (c && !c.startsWith("#")) out.push(...commandsOf(c));
    }
  return out;
}

/** A .dockerignore pattern matched against a context path (enough for the patterns these files use). */
function ignored(patterns: string[], p: string): boolean {
  return patterns.some((pat) => {
    const re = new RegExp("^" + pat.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*") + "(/.*)?$");
    return re.test(p);
  });
}

const FLAG_VARS = new Set(buildCommand().options.map((o) => o.envVar).filter((v): v is string => !!v));
const README = path.join(REPO_ROOT, "README.md");
const FILES = ["Dockerfile", "Dockerfile.cuda"];

describe.each(FILES)("docker/%s", (file) => {
  const dockerfile = path.join(REPO_ROOT, "docker", file);
  const { args, stages } = parseDockerfile(fs.readFileSync(dockerfile, "utf8"));
  const runtime = stages.at(-1)!;
  const builds = stages.slice(0, -1);
  const env = envOf(runtime);
  const jsonArgs = (op: string) => {
    const s = runtime.steps.filter((x) => x.op === op);
    return s.length ? (JSON.parse(s.at(-1)!.args) as string[]) : undefined;
  };

  it("is multi-stage, and its build steps are exactly the README's set-up commands", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const buildSteps: string[] = [];
    for (const st of stages)
      for (const run of st.steps.filter((x) => x.op === "RUN"))
        for (const c of commandsOf(run.args)) {
          if (BUILD_TOOLS.has(program(c))) buildSteps.push(c);
          else expect(SETUP_TOOLS[st === runtime ? "runtime" : "build"].has(program(c)), `${file}: RUN ${c}`).toBe(true);
        }
    expect(buildSteps).toEqual(setupCommands());
    expect(runtime.steps.some((x) => x.op === "RUN" && commandsOf(x.args).some((c) => BUILD_TOOLS.has(program(c))))).toBe(false);
  });

  it.skipIf(!fs.existsSync(README))("README.md shows the same set-up commands", () => {
    const cmds = readmeCommands(fs.readFileSync(README, "utf8"));
    for (const c of setupCommands()) expect(cmds, `README.md has no \`${c}\``).toContain(c);
  });

  it("builds from the whole context, with host outputs kept out by its own ignore file", () => {
    const build = builds.find((s) => s.steps.some((x) => x.op === "RUN" && x.args.includes("npm install")))!;
    expect(build.steps.some((x) => x.op === "COPY" && x.args === ". .")).toBe(true);
    const patterns = fs.readFileSync(`${dockerfile}.dockerignore`, "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const out of ["node_modules", "build/Release/loraserve_native.node", "dist/server/src/main.js", "data/adapter-cache", ".git"]) expect(ignored(patterns, out), out).toBe(true);
    for (const src of ["package.json", "package-lock.json", "binding.gyp", "native/src/addon.cc", "engine/src/engine.ts", "server/src/main.ts", "openapi/openapi.json", "models/demo/config.json", "bin/loraserve.js", "tsconfig.build.json", "docker/loraserve"])
      expect(ignored(patterns, src), src).toBe(false);
  });

  it("the runtime stage holds what the server reads, and runs as an unprivileged user", () => {
    const copied = runtime.steps.filter((x) => x.op === "COPY" && x.flags.includes("--from=build")).map((x) => x.args.split(/\s+/)[0].replace(/^\/app\//, ""));
    expect(copied.sort()).toEqual(["bin", "build/Release/loraserve_native.node", "dist", "models", "node_modules", "openapi", "package.json"]);
    const user = runtime.steps.filter((x) => x.op === "USER").at(-1)?.args ?? "root";
    expect(user.split(":")[0]).not.toMatch(/^(root|0)$/);
    const chown = runtime.steps.find((x) => x.op === "RUN" && x.args.includes("chown"))!;
    expect(chown.args).toContain(`chown -R ${user} /data`);
  });

  it("/data is the volume, the data directory (so the local adapter root) and holds HF_HOME", () => {
    const volumes = runtime.steps.filter((x) => x.op === "VOLUME").flatMap((x) => JSON.parse(x.args) as string[]);
    expect(volumes).toEqual(["/data"]);
    expect(env.DATA_DIR).toBe("/data");
    expect(env.HF_HOME.startsWith("/data/")).toBe(true);
    expect(env).not.toHaveProperty("ADAPTER_LOCAL_ROOTS");
  });

  it("HEALTHCHECK asks /health on the port the server listens on", () => {
    const hc = runtime.steps.find((x) => x.op === "HEALTHCHECK")!;
    expect(hc.args.startsWith("CMD [")).toBe(true);
    const cmd = JSON.parse(hc.args.slice(4)) as string[];
    expect(cmd[0]).toBe("node");
    expect(cmd.at(-1)).toMatch(/127\.0\.0\.1:' \+ process\.env\.PORT \+ '\/health'/);
    expect(hc.flags.some((f) => f.startsWith("--start-period="))).toBe(true);
    const expose = runtime.steps.find((x) => x.op === "EXPOSE")!.args;
    expect(env.PORT).toBe(expose);
  });

  it("the entrypoint is `loraserve`, listening on all interfaces despite Docker's HOSTNAME, with flags passed through", () => {
    const entry = jsonArgs("ENTRYPOINT")!;
    expect(entry[0]).toBe("loraserve");
    expect(jsonArgs("CMD")).toBeUndefined();
    const wrapper = runtime.steps.find((x) => x.op === "COPY" && x.args.endsWith("/usr/local/bin/loraserve"))!;
    expect(wrapper.flags).toContain("--chmod=0755");
    const script = fs.readFileSync(path.join(REPO_ROOT, wrapper.args.split(/\s+/)[0]), "utf8");
    expect(script).toMatch(/^#!\/bin\/sh\n/);
    expect(script).toContain('exec node /app/bin/loraserve.js "$@"');
    expect(fs.statSync(path.join(REPO_ROOT, "docker", "loraserve")).mode & 0o111).not.toBe(0);

    for (const k of Object.keys(env)) expect(FLAG_VARS.has(k) || ["HF_HOME", "NODE_ENV"].includes(k), k).toBe(true);
    const saved = { ...process.env };
    try {
      for (const k of FLAG_VARS) delete process.env[k];
      Object.assign(process.env, env, { HOSTNAME: "3f2c1a9b7e10" });
      const c = parseConfig(entry.slice(1));
      expect(c.hostname).toBe("0.0.0.0");
      expect(c.port).toBe(8080);
      expect(c.dataDir).toBe("/data");
      expect(c.adapterLocalRoots).toEqual(["/data"]);
      expect(c.device).toBe(file.endsWith(".cuda") ? "cuda" : "cpu");
      const passed = parseConfig([...entry.slice(1), "--max-active-adapters", "4", "--hostname", "::"]);
      expect(passed.maxActiveAdapters).toBe(4);
      expect(passed.hostname).toBe("::");
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  it("the base images: Node.js 20 (package.json's engine), and CUDA 13 devel to build, runtime to run", () => {
    expect(args.get("NODE_VERSION")).toBe("20");
    const engines = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, "package.json"), "utf8")).engines.node;
    expect(engines).toBe(">=20");
    if (file.endsWith(".cuda")) {
      expect(args.get("CUDA_VERSION")).toMatch(/^13\.\d+\.\d+$/);
      const build = stages.find((s) => s.name === "build")!;
      expect(build.from).toBe("nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU}");
      expect(runtime.from).toBe("nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}");
      expect(envOf(build).PATH.split(":")).toContain("/usr/local/cuda/bin");
      expect(runtime.steps.some((x) => x.op === "COPY" && x.args === "/usr/local/bin/node /usr/local/bin/node" && x.flags.includes("--from=node"))).toBe(true);
    } else {
      expect(stages.map((s) => s.from)).toEqual(["node:${NODE_VERSION}-bookworm", "node:${NODE_VERSION}-bookworm-slim"]);
    }
  });
});
