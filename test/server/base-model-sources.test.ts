// The base model from the Hugging Face Hub (a fake Hub on 127.0.0.1, into the standard Hub cache) and from S3
// (s3rver): the server starts, serves, and a missing repository fails start-up with a clear message.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Writable } from "node:stream";

import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { parseConfig } from "../../server/src/config.js";
import { startServer } from "../../server/src/main.js";
import { FakeHub } from "../helpers/fake-hub.js";
import { S3RVER_CREDENTIALS, TestS3 } from "../helpers/s3.js";
import { tinyModels } from "../helpers/tiny.js";

let hub: FakeHub;
let s3: TestS3;
let tmp: string;
const quiet = () => pino({ level: "silent" }, new Writable({ write: (_c, _e, cb) => cb() }));

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "loraserve-base-"));
  const dir = tinyModels()["llama-bf16-tied-linear"];
  const files = fs.readdirSync(dir).map((f) => ({ path: f, content: fs.readFileSync(path.join(dir, f)) }));
  hub = await FakeHub.start();
  hub.addRepo("acme/tiny-llama", files);
  s3 = await TestS3.start(["models"]);
  await s3.putAll("models", "tiny-llama", files);
  process.env.HF_ENDPOINT = hub.url;
  process.env.HF_HOME = path.join(tmp, "hf");
  process.env.AWS_ENDPOINT_URL = s3.endpoint;
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  process.env.AWS_REGION = "us-east-1";
});
afterAll(async () => {
  await hub.close();
  await s3.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function serveAndGenerate(modelId: string): Promise<string> {
  const s = await startServer(parseConfig(["--model-id", modelId, "--hostname", "127.0.0.1", "--port", "0", "--kv-cache-bytes", String(16 << 20), "--data-dir", path.join(tmp, "data")]), quiet());
  try {
    const url = `http://127.0.0.1:${(s.server.address() as { port: number }).port}`;
    expect((await fetch(`${url}/health`)).status).toBe(200);
    const r = await fetch(`${url}/generate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ inputs: "Hello", parameters: { max_new_tokens: 5 } }) });
    expect(r.status).toBe(200);
    return ((await r.json()) as { generated_text: string }).generated_text;
  } finally {
    await s.close();
  }
}

describe("base model sources", () => {
  it("from the Hub into the Hub cache layout, and from S3: both serve the same greedy text as the local copy", async () => {
    const local = await serveAndGenerate(tinyModels()["llama-bf16-tied-linear"]);
    expect(await serveAndGenerate("acme/tiny-llama")).toBe(local);
    const snapshots = path.join(tmp, "hf", "hub", "models--acme--tiny-llama", "snapshots");
    const [sha] = fs.readdirSync(snapshots);
    expect(fs.readdirSync(path.join(snapshots, sha)).sort()).toEqual(expect.arrayContaining(["config.json", "model.safetensors", "tokenizer.json"]));
    expect(await serveAndGenerate("s3://models/tiny-llama")).toBe(local);
  });

  it("a repository that does not exist fails start-up clearly", async () => {
    hub.validTokens.add("tok-x");
    process.env.HF_TOKEN = "tok-x";
    await expect(startServer(parseConfig(["--model-id", "acme/missing", "--port", "0", "--data-dir", path.join(tmp, "data")]), quiet())).rejects.toThrow(/acme\/missing/);
    delete process.env.HF_TOKEN;
  });
});
