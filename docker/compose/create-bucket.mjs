// Compose helper: creates the S3 bucket named on the command line (idempotent), retrying while the store starts.
// Runs in the loraserve image, whose node_modules has @aws-sdk/client-s3; credentials and endpoint from AWS_* env.
import { CreateBucketCommand, HeadBucketCommand, S3Client } from "@aws-sdk/client-s3";

const bucket = process.argv[2];
if (!bucket) {
  console.error("usage: node create-bucket.mjs <bucket>");
  process.exit(2);
}
const client = new S3Client({ forcePathStyle: true, region: process.env.AWS_REGION ?? "us-east-1" });
const attempts = Number(process.env.CREATE_BUCKET_ATTEMPTS ?? 60);
let last;
for (let i = 0; i < attempts; i++) {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
    console.log(`bucket ${bucket} is there`);
    process.exit(0);
  } catch (e) {
    last = e;
    const status = e?.$metadata?.httpStatusCode;
    if (status === 404 || e?.name === "NotFound" || e?.name === "NoSuchBucket") {
      try {
        await client.send(new CreateBucketCommand({ Bucket: bucket }));
        console.log(`bucket ${bucket} created`);
        process.exit(0);
      } catch (c) {
        last = c;
        if (c?.name === "BucketAlreadyOwnedByYou" || c?.name === "BucketAlreadyExists") process.exit(0);
      }
    }
  }
  await new Promise((r) => setTimeout(r, 1000));
}
console.error(`could not create bucket ${bucket} at ${process.env.AWS_ENDPOINT_URL ?? "AWS"}: ${last?.name ?? ""} ${last?.message ?? last}`);
process.exit(1);
