// Owns the deployment manifests' checks: every YAML under docker/k8s validated against the Kubernetes API schemas
// (kubernetes-models) or the vendored Inference Extension CRD schemas, the references between the objects, and the
// compose stack. Not the Dockerfiles (dockerfiles.test.ts) nor the metrics themselves (routing-metrics.test.ts).
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { Ajv, type ValidateFunction } from "ajv";
import { Deployment } from "kubernetes-models/apps/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from "kubernetes-models/v1";
import { describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";

import { buildCommand, parseConfig, REPO_ROOT, VERSION } from "../../server/src/config.js";
import { Metrics } from "../../server/src/metrics.js";
import { TestS3 } from "../helpers/s3.js";

const K8S = path.join(REPO_ROOT, "docker", "k8s");
const DOCKER = path.join(REPO_ROOT, "docker");

// Parsed YAML: the tests below read it field by field.
type Obj = Record<string, any>;

function readDocs(file: string): Obj[] {
  const docs = parseAllDocuments(fs.readFileSync(file, "utf8"));
  const out: Obj[] = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`);
    const v = d.toJS();
    if (v !== null) out.push(v);
  }
  return out;
}

const manifestFiles = fs.readdirSync(K8S).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml").sort();
const all = new Map(manifestFiles.map((f) => [f, readDocs(path.join(K8S, f))]));
const docs = [...all.values()].flat();
const find = (kind: string, name: string): Obj => {
  const d = docs.find((x) => x.kind === kind && x.metadata?.name === name);
  if (!d) throw new Error(`no ${kind} ${name} under docker/k8s`);
  return d;
};

// ---- validation ----

interface Model {
  validate(): void;
}
const MODELS: Record<string, new (data: any) => Model> = {
  "v1/Namespace": Namespace,
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "v1/ServiceAccount": ServiceAccount,
  "apps/v1/Deployment": Deployment,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "rbac.authorization.k8s.io/v1/Role": Role,
  "rbac.authorization.k8s.io/v1/RoleBinding": RoleBinding,
  "rbac.authorization.k8s.io/v1/ClusterRole": ClusterRole,
  "rbac.authorization.k8s.io/v1/ClusterRoleBinding": ClusterRoleBinding,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
};

/** kubectl's strict field validation: an object schema with properties rejects fields it does not name (not metadata). */
function strict(schema: Obj, key = ""): Obj {
  if (schema === null || typeof schema !== "object") return schema;
  const out: Obj = Array.isArray(schema) ? [] : {};
  for (const [k, v] of Object.entries(schema)) out[k] = k === "x-kubernetes-validations" ? v : strict(v as Obj, k);
  if (out.type === "object" && out.properties && out.additionalProperties === undefined && key !== "metadata") out.additionalProperties = false;
  return out;
}

const ajv = new Ajv({ allErrors: true, strict: false });
ajv.addFormat("int32", { type: "number", validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
ajv.addFormat("int64", { type: "number", validate: (n: number) => Number.isInteger(n) });
ajv.addFormat("date-time", (s: string) => !Number.isNaN(Date.parse(s)));
const CRD_SCHEMAS: Record<string, ValidateFunction> = Object.fromEntries(
  fs.readdirSync(path.join(K8S, "crds")).map((f) => {
    const s = JSON.parse(fs.readFileSync(path.join(K8S, "crds", f), "utf8"));
    return [`${s.properties.apiVersion.const}/${s.properties.kind.const}`, ajv.compile(strict(s))];
  }),
);

/** Throws with the validator's message unless the object is valid for its apiVersion and kind. */
function validate(o: Obj): void {
  if (typeof o.apiVersion !== "string" || typeof o.kind !== "string") throw new Error(`apiVersion and kind are required: ${JSON.stringify(o).slice(0, 120)}`);
  const key = `${o.apiVersion}/${o.kind}`;
  const Model = MODELS[key];
  if (Model) return new Model(o).validate();
  const crd = CRD_SCHEMAS[key];
  if (!crd) throw new Error(`no schema for ${key}: add its model package or vendor its CRD schema under docker/k8s/crds`);
  const name: unknown = o.metadata?.name;
  if (!crd(o)) throw new Error(`${key} ${name}: ${ajv.errorsText(crd.errors)}`);
}

function bytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!m) throw new Error(`not a quantity: ${q}`);
  const mult: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(m[1]) * (m[2] ? mult[m[2]] : 1);
}

const seconds = (d: string): number => {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) throw new Error(`not a Gateway API duration: ${d}`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] as "ms" | "s" | "m" | "h"];
};

/** RFC 6902 add/replace/remove on a deep copy (what kustomize does with a JSON patch). */
function jsonPatch(doc: Obj, ops: Obj[]): Obj {
  const out = structuredClone(doc);
  for (const op of ops) {
    const keys = (op.path as string).split("/").slice(1).map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = keys.pop()!;
    let parent: any = out;
    for (const k of keys) {
      if (parent[k] === undefined) throw new Error(`patch path ${op.path}: ${k} is missing`);
      parent = parent[k];
    }
    if (op.op === "add" && Array.isArray(parent)) parent.splice(last === "-" ? parent.length : Number(last), 0, op.value);
    else if (op.op === "add") parent[last] = op.value;
    else if (op.op === "replace") {
      if (parent[last] === undefined) throw new Error(`replace ${op.path}: nothing there`);
      parent[last] = op.value;
    } else if (op.op === "remove") delete parent[last];
    else throw new Error(`unsupported patch op ${op.op}`);
  }
  return out;
}

/** The environment variable of every loraserve flag (`--max-total-tokens` ↔ MAX_TOTAL_TOKENS). */
const FLAG_VARS = new Set(buildCommand().options.map((o) => o.envVar).filter((v): v is string => !!v));
/** Variables loraserve reads besides its flags (SPEC §2–3). */
const OTHER_VARS = new Set(["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "LOG_LEVEL", "NODE_ENV"]);

/** parseConfig under the given environment (restored afterwards). */
function configWith(env: Record<string, string>) {
  const saved = { ...process.env };
  try {
    for (const k of FLAG_VARS) delete process.env[k];
    Object.assign(process.env, env);
    return parseConfig([]);
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

const deployment = find("Deployment", "loraserve");
const pod = deployment.spec.template;
const container = pod.spec.containers.find((c: Obj) => c.name === "loraserve");
const config = find("ConfigMap", "loraserve-config");

describe("every manifest parses and validates against the API schemas", () => {
  it.each(manifestFiles)("%s", (file) => {
    const objs = all.get(file)!;
    expect(objs.length).toBeGreaterThan(0);
    for (const o of objs) validate(o);
  });

  it("the validators are not vacuous: broken objects are refused", () => {
    const badPort = structuredClone(deployment);
    badPort.spec.template.spec.containers[0].ports[0].containerPort = "eighty";
    expect(() => validate(badPort)).toThrow(/containerPort/);
    const noPicker = structuredClone(find("InferencePool", "loraserve"));
    delete noPicker.spec.endpointPickerRef;
    expect(() => validate(noPicker)).toThrow(/endpointPickerRef/);
    const oldField = structuredClone(find("InferencePool", "loraserve"));
    oldField.spec.targetPortNumber = 8080;
    expect(() => validate(oldField)).toThrow(/additional properties/);
    expect(() => validate({ apiVersion: "inference.networking.x-k8s.io/v1alpha2", kind: "InferenceModel", metadata: { name: "x" }, spec: {} })).toThrow(/no schema/);
  });

  it("kustomization.yaml lists every manifest but the examples and the adapter's rules; the image tag is the package version", () => {
    const k = parseYaml(fs.readFileSync(path.join(K8S, "kustomization.yaml"), "utf8"));
    const expected = manifestFiles.filter((f) => !f.endsWith(".example.yaml") && f !== "prometheus-adapter-rules.yaml");
    expect([...k.resources].sort()).toEqual(expected);
    for (const f of expected) expect(fs.existsSync(path.join(K8S, f))).toBe(true);
    const [name, tag] = container.image.split(":");
    expect(k.images).toContainEqual(expect.objectContaining({ name, newTag: VERSION }));
    expect(tag).toBe(VERSION);
  });

  it("the CUDA overlay patches the Deployment into a valid one with a GPU and --device cuda", () => {
    const k = parseYaml(fs.readFileSync(path.join(K8S, "cuda", "kustomization.yaml"), "utf8"));
    expect(k.resources).toEqual([".."]);
    const patch = k.patches[0];
    expect(patch.target).toMatchObject({ kind: "Deployment", name: deployment.metadata.name });
    const patched = jsonPatch(deployment, parseYaml(fs.readFileSync(path.join(K8S, "cuda", patch.path), "utf8")));
    validate(patched);
    const c = patched.spec.template.spec.containers[0];
    expect(c.resources.limits["nvidia.com/gpu"]).toBe("1");
    expect(c.env).toContainEqual({ name: "DEVICE", value: "cuda" });
    const base = parseYaml(fs.readFileSync(path.join(K8S, "kustomization.yaml"), "utf8")).images[0];
    expect(k.images[0].name).toBe(base.newName);
    expect(k.images[0].newName).toMatch(/-cuda$/);
  });
});

describe("the loraserve Deployment", () => {
  it("readiness, liveness and start-up probes all ask /health on the serving port", () => {
    const port = container.ports.find((p: Obj) => p.name === "http");
    expect(port.containerPort).toBe(configWith(config.data).port);
    for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) expect(container[probe].httpGet).toEqual({ path: "/health", port: "http" });
    const startupBudget = container.startupProbe.periodSeconds * container.startupProbe.failureThreshold;
    expect(startupBudget).toBeGreaterThanOrEqual(300);
  });

  it("termination grace outlasts the preStop sleep plus a drain as long as the longest request the route allows", () => {
    const shutdown = configWith(config.data).shutdownTimeoutS;
    const sleep = Number(container.lifecycle.preStop.exec.command[1]);
    expect(container.lifecycle.preStop.exec.command[0]).toBe("sleep");
    expect(pod.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(sleep + shutdown + 10);
    const routeTimeout = seconds(find("HTTPRoute", "loraserve").spec.rules[0].timeouts.request);
    expect(shutdown).toBeGreaterThanOrEqual(routeTimeout);
    expect(find("Deployment", "loraserve-epp").spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(pod.spec.terminationGracePeriodSeconds);
  });

  it("resources: requests and limits, threads from the CPU limit, memory budgets that fit the limit", () => {
    const { requests, limits } = container.resources;
    expect(requests.cpu).toBe(limits.cpu);
    expect(bytes(requests.memory)).toBe(bytes(limits.memory));
    const threads = container.env.find((e: Obj) => e.name === "THREADS");
    expect(threads.valueFrom.resourceFieldRef).toMatchObject({ containerName: "loraserve", resource: "limits.cpu" });
    const c = configWith(config.data);
    expect(c.kvCacheBytes).toBeDefined();
    expect(c.adapterMemoryBytes).toBeDefined();
    // active pool + host tier (4× the active budget, engine default) + KV + 1 GiB for the runtime; weights come on top.
    expect(c.kvCacheBytes! + 5 * c.adapterMemoryBytes! + 2 ** 30).toBeLessThanOrEqual(bytes(limits.memory));
  });

  it("HF token and AWS credentials come from Secrets that secrets.example.yaml describes", () => {
    const fromSecret = (name: string) => container.env.find((e: Obj) => e.name === name)?.valueFrom?.secretKeyRef;
    const secrets = new Map(all.get("secrets.example.yaml")!.map((s) => [s.metadata.name, s]));
    for (const v of ["HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
      const ref = fromSecret(v);
      expect(ref, v).toBeDefined();
      expect(Object.keys(secrets.get(ref.name)?.stringData ?? {}), v).toContain(ref.key);
    }
    for (const v of Object.keys(config.data)) expect(v).not.toMatch(/TOKEN|SECRET|KEY_ID/);
  });

  it("every ConfigMap and env variable is a loraserve flag or a variable it reads, and the flags parse", () => {
    for (const v of [...Object.keys(config.data), ...container.env.map((e: Obj) => e.name)]) expect(FLAG_VARS.has(v) || OTHER_VARS.has(v), v).toBe(true);
    const c = configWith({ ...config.data, THREADS: "4" });
    expect(c.modelId).toBe("/app/models/demo");
    expect(c.jsonOutput).toBe(true);
    expect(c.threads).toBe(4);
  });

  it("runs unprivileged, with the data directory and /tmp on volumes under a read-only root", () => {
    expect(pod.spec.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000 });
    expect(container.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true });
    const mounts = Object.fromEntries(container.volumeMounts.map((m: Obj) => [m.mountPath, m.name]));
    expect(Object.keys(mounts).sort()).toEqual(["/data", "/tmp"]);
    expect(pod.spec.enableServiceLinks).toBe(false);
  });
});

describe("references between the objects", () => {
  const podLabels = pod.metadata.labels;
  const selects = (sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => podLabels[k] === v);

  it("Service, PodDisruptionBudget, PodMonitor and InferencePool select the loraserve pods and their port", () => {
    expect(selects(deployment.spec.selector.matchLabels)).toBe(true);
    const svc = find("Service", "loraserve");
    expect(selects(svc.spec.selector)).toBe(true);
    expect(svc.spec.ports[0].targetPort).toBe("http");
    expect(selects(find("PodDisruptionBudget", "loraserve").spec.selector.matchLabels)).toBe(true);
    const pm = find("PodMonitor", "loraserve");
    expect(selects(pm.spec.selector.matchLabels)).toBe(true);
    expect(pm.spec.podMetricsEndpoints[0]).toMatchObject({ port: "http", path: "/metrics" });
    const pool = find("InferencePool", "loraserve");
    expect(selects(pool.spec.selector.matchLabels)).toBe(true);
    expect(pool.spec.targetPorts).toEqual([{ number: container.ports[0].containerPort }]);
    expect(find("PodDisruptionBudget", "loraserve").spec.maxUnavailable).toBeLessThan(find("HorizontalPodAutoscaler", "loraserve").spec.minReplicas);
  });

  it("the HPA scales the Deployment on a queue metric loraserve exports, served by the Prometheus adapter rule", () => {
    const hpa = find("HorizontalPodAutoscaler", "loraserve");
    expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: "apps/v1", kind: "Deployment", name: "loraserve" });
    const metric = hpa.spec.metrics[0];
    expect(metric.type).toBe("Pods");
    const rules = parseYaml(find("ConfigMap", "prometheus-adapter-loraserve").data["config.yaml"]).rules;
    const rule = rules.find((r: Obj) => r.name.as === metric.pods.metric.name);
    expect(rule).toBeDefined();
    const series = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{/.exec(rule.seriesQuery)![1];
    expect(new RegExp(rule.name.matches).test(series)).toBe(true);
    expect(rule.resources.overrides).toEqual({ namespace: { resource: "namespace" }, pod: { resource: "pod" } });
    expect(new Metrics("m").registry.getSingleMetric(series), `loraserve exports ${series}`).toBeDefined();
  });

  it("Gateway API Inference Extension: HTTPRoute → InferencePool → endpoint picker Service → EPP Deployment", () => {
    const pool = find("InferencePool", "loraserve");
    const backend = find("HTTPRoute", "loraserve").spec.rules[0].backendRefs[0];
    expect(backend).toEqual({ group: "inference.networking.k8s.io", kind: "InferencePool", name: pool.metadata.name });
    const ref = pool.spec.endpointPickerRef;
    // The CRD's CEL rules: a Service reference carries a port; target port numbers are unique.
    expect(ref.kind ?? "Service").toBe("Service");
    expect(ref.port).toBeDefined();
    expect(new Set(pool.spec.targetPorts.map((p: Obj) => p.number)).size).toBe(pool.spec.targetPorts.length);
    const eppSvc = find("Service", ref.name);
    const svcPort = eppSvc.spec.ports.find((p: Obj) => p.port === ref.port.number);
    expect(svcPort).toMatchObject({ appProtocol: "http2" });
    const epp = find("Deployment", ref.name);
    expect(Object.entries(eppSvc.spec.selector).every(([k, v]) => epp.spec.template.metadata.labels[k] === v)).toBe(true);
    const c = epp.spec.template.spec.containers[0];
    expect(c.ports.find((p: Obj) => p.name === svcPort.targetPort).containerPort).toBe(9002);
    const arg = (flag: string) => c.args[c.args.indexOf(flag) + 1];
    expect(arg("--pool-name")).toBe(pool.metadata.name);
    expect(epp.spec.template.spec.serviceAccountName).toBe("loraserve-epp");
    const configPath = arg("--config-file");
    const mount = c.volumeMounts.find((m: Obj) => configPath.startsWith(m.mountPath + "/"));
    const cm = find("ConfigMap", epp.spec.template.spec.volumes.find((v: Obj) => v.name === mount.name).configMap.name);
    const picker = parseYaml(cm.data[path.basename(configPath)]);
    expect(picker.kind).toBe("EndpointPickerConfig");
    const types = picker.plugins.map((p: Obj) => p.type);
    expect(types).toEqual(expect.arrayContaining(["lora-affinity-scorer", "queue-scorer", "kv-cache-utilization-scorer"]));
    const used = picker.schedulingProfiles[0].plugins.map((p: Obj) => p.pluginRef);
    expect(used.every((u: string) => types.includes(u))).toBe(true);
    const role = find("Role", "loraserve-epp");
    const can = (group: string, resource: string) => role.rules.some((r: Obj) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes("watch"));
    expect(can("", "pods") && can("inference.networking.k8s.io", "inferencepools") && can("inference.networking.x-k8s.io", "inferenceobjectives")).toBe(true);
    expect(find("RoleBinding", "loraserve-epp").subjects[0].name).toBe(epp.spec.template.spec.serviceAccountName);
  });

  it("InferenceObjectives and the model rewrite example point at the pool; rewrite weights are on all targets or none", () => {
    const objectives = docs.filter((d) => d.kind === "InferenceObjective" || d.kind === "InferenceModelRewrite");
    expect(objectives.length).toBeGreaterThanOrEqual(3);
    for (const o of objectives) expect(o.spec.poolRef).toMatchObject({ group: "inference.networking.k8s.io", name: "loraserve" });
    for (const rule of find("InferenceModelRewrite", "support-bot").spec.rules) {
      const weighted = rule.targets.filter((t: Obj) => t.weight !== undefined).length;
      expect([0, rule.targets.length]).toContain(weighted);
    }
  });
});

describe("the compose stack", () => {
  const compose = parseYaml(fs.readFileSync(path.join(DOCKER, "compose.yaml"), "utf8"), { merge: true });
  const svc = compose.services;

  it("builds the CPU image, waits for the bucket, and passes only variables loraserve reads", () => {
    expect(Object.keys(svc).sort()).toEqual(["create-bucket", "loraserve", "prometheus", "s3"]);
    expect(svc.loraserve.build).toEqual({ context: "..", dockerfile: "docker/Dockerfile" });
    expect(svc.loraserve.image).toBe(`loraserve:${VERSION}`);
    expect(svc.loraserve.depends_on["create-bucket"]).toEqual({ condition: "service_completed_successfully" });
    for (const v of Object.keys(svc.loraserve.environment)) expect(FLAG_VARS.has(v) || OTHER_VARS.has(v), v).toBe(true);
    expect(svc.loraserve.volumes).toContain("data:/data");
    const grace = /^(\d+)s$/.exec(svc.loraserve.stop_grace_period)![1];
    expect(Number(grace)).toBeGreaterThanOrEqual(configWith({}).shutdownTimeoutS);
  });

  it("the S3 endpoint, credentials and bucket agree between loraserve, the store and the bucket job", () => {
    const env = svc.loraserve.environment;
    const endpoint = new URL(env.AWS_ENDPOINT_URL);
    expect(endpoint.hostname).toBe("s3");
    expect(svc.s3.command).toContain(`-s3.port=${endpoint.port}`);
    const mount = svc.s3.volumes.find((v: string) => v.includes("s3.json")).split(":");
    expect(svc.s3.command).toContain(`-s3.config=${mount[1]}`);
    const identities = JSON.parse(fs.readFileSync(path.join(DOCKER, mount[0]), "utf8")).identities;
    expect(identities[0].credentials[0]).toEqual({ accessKey: env.AWS_ACCESS_KEY_ID, secretKey: env.AWS_SECRET_ACCESS_KEY });
    expect(identities[0].actions).toEqual(expect.arrayContaining(["Read", "List", "Write"]));
    const job = svc["create-bucket"];
    expect(job.environment).toEqual(expect.objectContaining({ AWS_ENDPOINT_URL: env.AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID: env.AWS_ACCESS_KEY_ID }));
    const [script, target] = job.volumes[0].split(":");
    expect(fs.existsSync(path.join(DOCKER, script))).toBe(true);
    expect(job.entrypoint.slice(0, 2)).toEqual(["node", target]);
  });

  it("Prometheus scrapes loraserve's /metrics on its port", () => {
    const prom = parseYaml(fs.readFileSync(path.join(DOCKER, "prometheus", "prometheus.yml"), "utf8"));
    const job = prom.scrape_configs.find((j: Obj) => j.job_name === "loraserve");
    expect(job.metrics_path ?? "/metrics").toBe("/metrics");
    expect(job.static_configs[0].targets).toEqual([`loraserve:${svc.loraserve.ports[0].split(":")[1]}`]);
    expect(svc.prometheus.volumes[0]).toMatch(/^\.\/prometheus\/prometheus\.yml:\/etc\/prometheus\/prometheus\.yml/);
  });

  it("the bucket job creates the bucket on a real S3 endpoint, and a second run finds it", async () => {
    const s3 = await TestS3.start([]);
    try {
      const run = promisify(execFile);
      const env = { ...process.env, AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", AWS_REGION: "us-east-1", AWS_ENDPOINT_URL: s3.endpoint, CREATE_BUCKET_ATTEMPTS: "3" };
      const script = path.join(DOCKER, "compose", "create-bucket.mjs");
      const bucket = svc["create-bucket"].entrypoint[2];
      expect((await run("node", [script, bucket], { env })).stdout).toContain(`bucket ${bucket} created`);
      expect((await run("node", [script, bucket], { env })).stdout).toContain(`bucket ${bucket} is there`);
    } finally {
      await s3.close();
    }
  });
});
