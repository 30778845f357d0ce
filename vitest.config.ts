import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Each file loads the 250 MB XLA plugin; two files at a time suit these 2-core machines.
    pool: 'forks',
    maxWorkers: 2,
  },
});
