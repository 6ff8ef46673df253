import { defineConfig } from '@playwright/test';
import { chromiumLaunchOptions } from './support/chromium';

export default defineConfig({
  testDir: './tests',
  globalSetup: './support/global-setup.ts',
  outputDir: './test-results',
  // A file's scenarios run in order; two files run at once, one per core, each worker on
  // platforms of its own (support/fixtures.ts). The scenarios mostly wait for Machines.
  fullyParallel: false,
  workers: 2,
  retries: 0,
  timeout: 60_000,
  expect: { timeout: 15_000 },
  reporter: [['list'], ['./support/summary-reporter.ts']],
  use: {
    headless: true,
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
    launchOptions: chromiumLaunchOptions,
  },
  // One local Fly platform per project and worker (support/platforms.ts): every scenario
  // runs with fly-proxy's nearest-Machine balancing and again with every request reaching a
  // wrong Machine first; the capacity scenario has a platform of its own, and so do the
  // visitors from three continents (`world`: distance and Fly's timings) and the warm pool
  // (`pool`).
  projects: [
    { name: 'nearest', use: { browserName: 'chromium' }, testIgnore: /(capacity|world|pool)\.spec\.ts/ },
    // The harness check (the visitor's address header) is about the browser: once is enough.
    { name: 'wrong-first', use: { browserName: 'chromium' }, testIgnore: /(capacity|harness|world|pool)\.spec\.ts/ },
    { name: 'capacity', use: { browserName: 'chromium' }, testMatch: /capacity\.spec\.ts/ },
    { name: 'world', use: { browserName: 'chromium' }, testMatch: /world\.spec\.ts/ },
    { name: 'pool', use: { browserName: 'chromium' }, testMatch: /pool\.spec\.ts/ },
  ],
});
