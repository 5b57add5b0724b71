#!/usr/bin/env node
// The `loraserve` command: runs the compiled server (npm install builds it into dist/).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const main = new URL("../dist/server/src/main.js", import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  console.error("loraserve: dist/ is missing; run `npm install` (or `npm run build`) in the repository first");
  process.exit(1);
}
const { main: run } = await import(main.href);
await run();
