import fs from 'node:fs';
import path from 'node:path';
import { test as base, expect, type BrowserContext, type Page } from '@playwright/test';
import { startLocal, stopWithSummary, type PlatformInfo } from './flyby-local';
import { LocalApi } from './local-api';
import { PLATFORMS } from './platforms';

/** The request header flyby-local takes a visitor's address from (see src/local/proxy.rs). */
export const CLIENT_IP_HEADER = 'flyby-local-client-ip';

/** A visitor: a browser context of their own, with an address of their own. */
export interface Visitor {
  ip: string;
  context: BrowserContext;
  page: Page;
}

interface WorkerFixtures {
  /**
   * The local Fly platform of this worker's project, started when the worker first needs it
   * and stopped with the worker: a worker runs one project's tests, one at a time, so no
   * other scenario touches the platform while a scenario runs.
   */
  platform: PlatformInfo;
}

interface Fixtures {
  /** The Machines API admin endpoint: Machines, faults, counters. */
  api: LocalApi;
  /** Failures the test provokes on purpose, matched against each problem line. */
  expectedFailures: RegExp[];
  /** The address of the default visitor (`page`). */
  visitorIp: string;
  /**
   * Another visitor, in a browser context of their own, with an address of their own; the
   * failures given are expected on that visitor's pages only.
   */
  newVisitor: (options?: { expectedFailures?: RegExp[] }) => Promise<Visitor>;
  /** Problems seen on any page of the test so far. */
  problems: string[];
  /**
   * On the `wrong-first` platform, another visitor's Machine runs during the test (option,
   * default on), so that the visitor's own Machine is never the only one and every request
   * of theirs reaches the wrong Machine first there too.
   */
  bystander: boolean;
  bystanderMachine: void;
  /** After each test: faults disarmed, and no visitor's Machine left alive. */
  leavesNothingBehind: void;
}

// A visitor's address: unique across the run (launches are rate-limited per address, and the
// worker process may be restarted after a failure), from TEST-NET-2.
let visitors = 0;
const runTag = Math.floor(Math.random() * 200);
function nextIp(): string {
  visitors += 1;
  return `198.51.${(runTag + Math.floor(visitors / 250)) % 256}.${(visitors % 250) + 1}`;
}

/**
 * Every page of every visitor fails its test on a console error, an uncaught exception, a
 * failed request or an HTTP error status, unless the test declares (`expectedFailures`) the
 * failure it provokes.
 */
function watch(context: BrowserContext, problems: string[], expectedFailures: RegExp[]) {
  const expected = (line: string) => expectedFailures.some((re) => re.test(line));
  const report = (line: string) => {
    if (!expected(line)) problems.push(line);
  };
  const watchPage = (page: Page) => {
    page.on('console', (msg) => {
      if (msg.type() === 'error') report(`console: ${msg.text()} (at ${msg.location().url})`);
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('requestfailed', (req) =>
      report(`request failed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`),
    );
    page.on('response', (res) => {
      if (res.status() >= 400) report(`HTTP ${res.status()}: ${res.request().method()} ${res.url()}`);
    });
  };
  context.pages().forEach(watchPage);
  context.on('page', watchPage);
}

function noProblems(problems: string[]) {
  const seen = problems.splice(0);
  expect(seen, 'console errors, page errors, failed requests or HTTP errors').toEqual([]);
}

export const test = base.extend<Fixtures, WorkerFixtures>({
  expectedFailures: [[], { option: true }],
  platform: [
    async ({}, use, workerInfo) => {
      const name = workerInfo.project.name;
      const args = PLATFORMS[name];
      if (!args) throw new Error(`no local platform for project ${name} (support/platforms.ts)`);
      const outputDir = workerInfo.project.outputDir;
      const log = path.join(outputDir, `flyby-local-${name}-worker${workerInfo.workerIndex}.log`);
      const platform = await startLocal(name, args, log);
      try {
        const { stop: _stop, ...info } = platform;
        await use(info);
      } finally {
        await stopWithSummary(platform, outputDir);
      }
    },
    // Its start (up to 60 s on a busy machine) is not the first test's time.
    { scope: 'worker', timeout: 120_000 },
  ],
  api: async ({ platform }, use) => {
    await use(new LocalApi(platform.api));
  },
  problems: async ({}, use) => {
    await use([]);
  },
  visitorIp: async ({}, use) => {
    await use(nextIp());
  },
  extraHTTPHeaders: async ({ visitorIp }, use) => {
    await use({ [CLIENT_IP_HEADER]: visitorIp });
  },
  context: async ({ context, problems, expectedFailures }, use) => {
    watch(context, problems, expectedFailures);
    await use(context);
  },
  page: async ({ page, problems }, use) => {
    await use(page);
    noProblems(problems);
  },
  newVisitor: async ({ browser, problems, expectedFailures, contextOptions }, use) => {
    const contexts: BrowserContext[] = [];
    await use(async (options) => {
      const ip = nextIp();
      const context = await browser.newContext({
        ...contextOptions,
        extraHTTPHeaders: { [CLIENT_IP_HEADER]: ip },
      });
      contexts.push(context);
      watch(context, problems, [...expectedFailures, ...(options?.expectedFailures ?? [])]);
      return { ip, context, page: await context.newPage() };
    });
    noProblems(problems);
    await Promise.all(contexts.map((c) => c.close()));
  },
  bystander: [true, { option: true }],
  bystanderMachine: [
    async ({ platform, api, bystander }, use) => {
      if (platform.name !== 'wrong-first' || !bystander) return use();
      const id = await api.startBystander(platform.launcher);
      await use();
      await api.crash(id).catch(() => {});
    },
    { auto: true },
  ],
  leavesNothingBehind: [
    async ({ api, platform }, use, testInfo) => {
      const logStart = fileSize(platform.log);
      await use();
      await api.clearFaults();
      let leftBehind: string[] = [];
      try {
        // Every Machine of a passing scenario is ending or gone by now: give the last ones
        // the time of their switch-off (3 s) and their exit. A failed test does not wait.
        if (testInfo.status === testInfo.expectedStatus) {
          await expect
            .poll(async () => (await api.alive()).map((m) => `${m.id} (${m.state})`), {
              message: 'visitor Machines left alive after the test',
              timeout: 20_000,
            })
            .toEqual([]);
        }
      } finally {
        // Orphans are crashed away (auto_destroy removes them) so the next test starts clean.
        const alive = await api.alive();
        leftBehind = alive.map((m) => m.id);
        for (const m of alive) await api.crash(m.id).catch(() => {});
        if (testInfo.status !== testInfo.expectedStatus || leftBehind.length > 0) {
          await testInfo.attach(`flyby-local-${platform.name}.log`, {
            body: readFrom(platform.log, logStart),
            contentType: 'text/plain',
          });
        }
      }
    },
    { auto: true },
  ],
});

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function readFrom(file: string, offset: number): string {
  try {
    return fs.readFileSync(file).subarray(offset).toString('utf8');
  } catch (e) {
    return `(log unavailable: ${(e as Error).message})`;
  }
}

export { expect };

/**
 * The failures a test provokes, for `test.use({ expectedFailures })`, as one pattern:
 * `test.use` reads an array of two or more as a fixture's `[value, options]`.
 */
export function provoked(...patterns: RegExp[]): RegExp[] {
  return [new RegExp(patterns.map((p) => `(?:${p.source})`).join('|'))];
}

/** Waits until the WASM bundle has hydrated the page. */
export async function hydrated(page: Page) {
  await expect(page.locator('body[data-hydrated]')).toBeAttached();
}
