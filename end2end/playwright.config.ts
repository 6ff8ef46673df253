import { defineConfig } from '@playwright/test';
import { chromiumLaunchOptions } from './support/chromium';

export default defineConfig({
  testDir: './tests',
  globalSetup: './support/global-setup.ts',
  outputDir: './test-results',
  fullyParallel: false,
  workers: 1,
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
  // One local Fly platform per project, started by the global setup (support/platforms.ts):
  // every scenario runs with fly-proxy's nearest-Machine balancing and again with every
  // request reaching a wrong Machine first; the capacity scenario has a platform of its own,
  // and so do the visitors from three continents (`world`: distance and Fly's timings) and the
  // warm pool (`pool`).
  projects: [
    { name: 'nearest', use: { browserName: 'chromium' }, testIgnore: /(capacity|world|pool)\.spec\.ts/ },
    // The harness check (the visitor's address header) is about the browser: once is enough.
    { name: 'wrong-first', use: { browserName: 'chromium' }, testIgnore: /(capacity|harness|world|pool)\.spec\.ts/ },
    { name: 'capacity', use: { browserName: 'chromium' }, testMatch: /capacity\.spec\.ts/ },
    { name: 'world', use: { browserName: 'chromium' }, testMatch: /world\.spec\.ts/ },
    { name: 'pool', use: { browserName: 'chromium' }, testMatch: /pool\.spec\.ts/ },
  ],
});
