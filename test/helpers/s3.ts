// s3rver as a real S3 endpoint on 127.0.0.1 for tests and benchmarks, plus a client to put adapter files into it.
// s3rver checks the access key id (only S3RVER exists) but does not verify SigV4 signatures, so a wrong secret passes.

import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

interface S3rverInstance {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
}
type S3rverCtor = new (opts: Record<string, unknown>) => S3rverInstance;

/** The only credentials s3rver knows. */
export const S3RVER_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };

export class TestS3 {
  private constructor(
    private readonly server: S3rverInstance,
    private readonly dir: string,
    readonly endpoint: string,
    readonly client: S3Client,
  ) {}

  static async start(buckets: string[]): Promise<TestS3> {
    const S3rver = createRequire(import.meta.url)("s3rver") as S3rverCtor;
    const dir = await mkdtemp(join(tmpdir(), "loraserve-s3rver-"));
    const server = new S3rver({ address: "127.0.0.1", port: 0, silent: true, directory: dir, configureBuckets: buckets.map((name) => ({ name })) });
    const { port } = await server.run();
    const endpoint = `http://127.0.0.1:${port}`;
    const client = new S3Client({
      region: "us-east-1",
      endpoint,
      forcePathStyle: true,
      credentials: S3RVER_CREDENTIALS,
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
    return new TestS3(server, dir, endpoint, client);
  }

  async put(bucket: string, key: string, body: Buffer): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  }

  /** Puts `files` under `prefix/`. */
  async putAll(bucket: string, prefix: string, files: { path: string; content: Buffer }[]): Promise<void> {
    for (const f of files) await this.put(bucket, `${prefix.replace(/\/+$/, "")}/${f.path}`, f.content);
  }

  /** Stops answering; the directory stays until `close`. */
  async stop(): Promise<void> {
    await this.server.close();
  }

  async close(): Promise<void> {
    await this.server.close().catch(() => undefined);
    this.client.destroy();
    await rm(this.dir, { recursive: true, force: true });
  }
}
