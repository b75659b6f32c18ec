import { defineConfig } from "vitest/config";

// Tests start real server processes; two workers keep a 2-core machine responsive.
export default defineConfig({
  test: {
    // *.heavy.test.ts load the machine enough that a VM or disk stall can fail them (docs/testing.md):
    // `npm run test:heavy` runs them, alone.
    include: process.env.CHATPLUS_HEAVY ? ["tests/**/*.heavy.test.ts"] : ["tests/**/*.test.ts"],
    exclude: process.env.CHATPLUS_HEAVY ? ["**/node_modules/**"] : ["**/node_modules/**", "tests/**/*.heavy.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    fileParallelism: true,
  },
});
