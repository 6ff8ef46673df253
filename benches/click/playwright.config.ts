import { defineConfig } from '@playwright/test';
import { chromiumLaunchOptions } from '../../end2end/support/chromium';

// `make bench`'s click-to-own-page measurement (benches/click/click.bench.ts), run by
// scripts/bench from end2end/ (whose node_modules has Playwright) with this config, and the
// probes behind BENCHMARKS.md's notes (`*.probe.ts`, run by hand). Debian's chromium, as the
// e2e suite uses it.
export default defineConfig({
  testDir: '.',
  testMatch: /.*\.(bench|probe)\.ts$/,
  outputDir: '../../target/bench-click-results',
  fullyParallel: false,
  workers: 1,
  retries: 0,
  timeout: 300_000,
  expect: { timeout: 30_000 },
  reporter: [['list']],
  use: {
    headless: true,
    launchOptions: chromiumLaunchOptions,
  },
  projects: [{ name: 'chromium', use: { browserName: 'chromium' } }],
});
