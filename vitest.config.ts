import { defineConfig } from "vitest/config";

// Tests start real server processes; two workers keep a 2-core machine responsive.
export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    fileParallelism: true,
  },
});
