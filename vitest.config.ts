// Test runner settings: which files are tests, and the time a native-heavy test may take.
// Suites that need a GPU or a network peer decide for themselves whether to skip.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: "forks",
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
  },
});
