import type { Page } from '@playwright/test';
import type { PlatformInfo } from '../support/flyby-local';
import { test, expect, hydrated, provoked } from '../support/fixtures';
import {
  arriveOnMachine,
  backToLauncher,
  expectAccessible,
  expectCountdown,
  expectNoMore,
  expectRttUpdates,
  launch,
  launchButton,
  openLauncher,
} from '../support/journey';

const apiDown = 'the Fly Machines API is not answering properly right now, try again shortly';

test.describe('the Machine dies under the visitor', () => {
  // The live channel drops without a goodbye, and the WebSocket client says so on the console;
  // the page then asks the Machine, and the 410 of a Machine gone is the answer.
  test.use({
    expectedFailures: provoked(
      /^console: WebSocket Closed: code: 1006\b/,
      /^HTTP 410: POST [^ ]*\/api\/machine$/,
      /^console: Failed to load resource: the server responded with a status of 410 \(Gone\)/,
    ),
  });
  const crashed = 'It stopped unexpectedly and was destroyed: your Machine is gone.';

  test('the page says it is gone, with no error page', async ({ page, platform, api }) => {
    await openLauncher(page, platform);
    const id = await launch(page);
    await expectRttUpdates(page);

    await api.crash(id);
    await expectNoMore(page, api, id, crashed);
    await expect(page.locator('.rtt')).toHaveCount(0);
    await expectAccessible(page, 'the Machine page after a crash');
    await backToLauncher(page, platform);
  });

  test("a later visit lands on the launcher's gone page, not a 5xx", async ({ page, platform, api, newVisitor }) => {
    // Another visitor's Machine is alive: it gets the request, its replay to the dead Machine
    // fails, and it sends the visitor to the launcher's "gone" page.
    const bystander = await newVisitor();
    await openLauncher(bystander.page, platform);
    const other = await launch(bystander.page);

    await openLauncher(page, platform);
    const id = await launch(page);
    await api.crash(id);
    await expectNoMore(page, api, id, crashed);
    await expectGonePage(page, platform, id);

    await bystander.page.getByRole('button', { name: 'Switch it off now' }).click();
    await expectNoMore(bystander.page, api, other, 'It switched itself off and was destroyed, for good.');
  });

  // With no visitor's Machine left, the visitors' app's concierge (created by the launcher
  // after the first launch) takes the request and sends the visitor to the "gone" page.
  test("a later visit lands on the launcher's gone page even when no visitor Machine is left", async ({
    page,
    platform,
    api,
  }) => {
    await openLauncher(page, platform);
    const id = await launch(page);
    await api.crash(id);
    await expectNoMore(page, api, id, crashed);
    await expectGonePage(page, platform, id);
  });
});

test.describe('a network blip cuts the live channel', () => {
  test.use({
    expectedFailures: provoked(
      /^console: WebSocket Closed: code: 1006\b/,
      // The upgrades the proxy refuses while the blip lasts, and a ping sent as one closed.
      /^console: WebSocket connection (to 'ws:\/\/[^']*\/api\/channel[^']*' )?failed/,
      /^console: WebSocket is already in CLOSING or CLOSED state\./,
    ),
  });

  test('the page reconnects, the show goes on, and the end is reported once', async ({ page, platform, api }) => {
    await openLauncher(page, platform);
    const id = await launch(page);
    await expectRttUpdates(page);

    await api.cutWebsockets(id, 2_000);
    const linkState = page.locator('.link-state[role=status]');
    await expect(linkState).toHaveText('Lost touch with your Machine for a moment: reconnecting…');
    await expect(page.locator('.rtt')).toHaveText('reconnecting…');
    await expect(linkState).toHaveText('', { timeout: 20_000 });

    // The same Machine, its show still on: round trips again, the countdown still going.
    await expect(page.locator('.machine-id')).toHaveText(id);
    await expectRttUpdates(page);
    await expectCountdown(page);
    const noMore = page.getByRole('heading', { name: 'This Machine is no more' });
    await expect(noMore).toHaveCount(0);

    await page.getByRole('button', { name: 'Switch it off now' }).click();
    await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');
    await expect(noMore).toHaveCount(1);
    await expect(page.locator('.no-more')).toHaveCount(1);
  });
});

/** Reloads a dead Machine's page: the launcher's "gone" page, and the launcher from there. */
async function expectGonePage(page: Page, platform: PlatformInfo, id: string) {
  const answer = await page.goto(`${platform.machines}/m/${id}`);
  await page.waitForURL(`${platform.launcher}/gone`);
  expect(answer?.status()).toBe(200);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('Your Machine is gone');
  await hydrated(page);
  await expectAccessible(page, 'the gone page');
  await page.getByRole('link', { name: 'Back to the start' }).click();
  await page.waitForURL(`${platform.launcher}/`);
  await expect(launchButton(page)).toBeEnabled();
}

test.describe('the Fly API fails', () => {
  test('unreachable: the page says launches are paused, and they resume by themselves', async ({
    page,
    platform,
    api,
  }) => {
    // The launchers' lists are retried for a while before the tracker calls Fly unreachable.
    test.slow();
    await openLauncher(page, platform);
    await expect(launchButton(page)).toBeEnabled();
    await api.fault({ kind: 'api', action: 'list', count: 100_000, refuse: true });
    const state = page.locator('.fly-state[role=status]');
    await expect(state).toHaveText(
      /^Can't reach Fly right now: launches are paused until it answers again\. The map is \d+ s old\.$/,
      { timeout: 60_000 },
    );
    await expect(launchButton(page)).toBeDisabled();
    await expectAccessible(page, 'the launcher while Fly is unreachable');
    await api.clearFaults();
    await expect(state).toHaveCount(0, { timeout: 30_000 });
    await expect(launchButton(page)).toBeEnabled();
    // The other launchers too, before the next test launches through any of them.
    await expect.poll(() => api.everyLauncherReachesFly(), { timeout: 30_000 }).toBe(true);
  });

  test('refusing the token: the page says so once, and not "try again"', async ({ page, platform, api }) => {
    await openLauncher(page, platform);
    await api.fault({ kind: 'api', action: 'list', count: 100_000, status: 401 });
    const state = page.locator('.fly-state[role=status]');
    await expect(state).toHaveText(
      "This launcher can't create Machines: Fly refuses its credentials. Its operator has been told.",
      { timeout: 30_000 },
    );
    await expect(state).not.toContainText('try again');
    await expect(launchButton(page)).toBeDisabled();
    await api.clearFaults();
    await expect(state).toHaveCount(0, { timeout: 30_000 });
    await expect(launchButton(page)).toBeEnabled();
    // The other launchers too, before the next test launches through any of them.
    await expect.poll(() => api.everyLauncherReachesFly(), { timeout: 30_000 }).toBe(true);
  });

  for (const [status, name] of [
    [500, 'failing (create 500)'],
    [429, 'rate-limiting every create (create 429)'],
  ] as const) {
    test(`${name}: the visitor is told, nothing is left behind`, async ({ page, platform, api }) => {
      // A 429 is waited out for a while ("Waiting for a slot") before the launcher gives up.
      test.slow(status === 429);
      await openLauncher(page, platform);
      const createsBefore = await api.created();
      await api.fault({ kind: 'api', action: 'create', count: status === 429 ? 100_000 : 100, status });

      await launchButton(page).click();
      const steps = page.locator('.steps .step .label');
      await expect(steps.first()).toHaveText('Requested');
      if (status === 429) {
        await expect(steps.nth(1)).toHaveText(/^Waiting for a slot/);
        // One launch per visitor at a time: the button waits with them.
        await expect(launchButton(page)).toBeDisabled();
        await expect(page.locator('.progress .timer')).toHaveText(/^\d+\.\d s$/);
        await expectAccessible(page, 'the launcher during a launch');
      }
      const error = page.locator('.error[role=alert]');
      // A 429 is retried for 45 s from the first attempt (RATE_LIMIT_PATIENCE), plus the last
      // back-off: the message comes about 47 s after the click.
      await expect(error).toHaveText(apiDown, { timeout: 60_000 });
      await expect(steps).not.toContainText(['Started']);
      if (status === 429) {
        // However many times it queued, one row says so, with how often and for how long.
        await expect(steps.filter({ hasText: 'Waiting for a slot' })).toHaveCount(1);
        await expect(steps.nth(1)).toHaveText(/^Waiting for a slot \(\d+ tries, \d+ s\)$/);
      }
      await expect(launchButton(page)).toBeEnabled();
      await expect(page).toHaveURL(`${platform.launcher}/`);
      await expectAccessible(page, 'the launcher showing an error');
      expect(await api.alive(), 'nothing left behind').toEqual([]);
      expect(await api.created(), 'no Machine was created').toBe(createsBefore);

      // Once the API answers again, the same visitor launches.
      await api.clearFaults();
      await launchButton(page).click();
      const id = await arriveOnMachine(page);
      await expect(page.locator('.error')).toHaveCount(0);
      await page.getByRole('button', { name: 'Switch it off now' }).click();
      await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');
    });
  }
});

test.describe('a visitor who launches too often', () => {
  // The launch server function refuses with 429 and its typed error.
  test.use({ expectedFailures: [/\b429\b.*\/api\/launch\b/] });

  test('is told to slow down, and launches nothing', async ({ page, platform, api }) => {
    await openLauncher(page, platform);
    // Three launches a minute per visitor (FLYBY_LAUNCHES_PER_MINUTE): failing ones count too,
    // and they fail fast.
    await api.fault({ kind: 'api', action: 'create', count: 100, status: 500 });
    const error = page.locator('.error[role=alert]');
    for (let i = 0; i < 3; i++) {
      await launchButton(page).click();
      await expect(error).toHaveText(apiDown, { timeout: 30_000 });
      await expect(launchButton(page)).toBeEnabled();
    }
    await api.clearFaults();
    const before = await api.created();
    await launchButton(page).click();
    await expect(error).toHaveText(/^slow down: you can launch again in \d+ s$/);
    await expect(launchButton(page)).toBeEnabled();
    await expectAccessible(page, 'the launcher saying slow down');
    expect(await api.created(), 'nothing created').toBe(before);
  });
});

test.describe('the hand-over request is cut on its way', () => {
  // What a proxy's idle timeout would do on a slow launch to the request that waits for its
  // end: it fails in transit, and the browser says so.
  test.use({ expectedFailures: [/\/api\/handover\b/] });

  test('the page asks again, and the visitor lands on their Machine', async ({
    page,
    platform,
    api,
  }) => {
    let asked = 0;
    await page.route('**/api/handover', (route) =>
      ++asked === 1 ? route.abort('connectionreset') : route.continue(),
    );
    await openLauncher(page, platform);
    const id = await launch(page);
    expect(asked, 'the hand-over asked for again after the cut').toBe(2);
    expect((await api.alive()).map((m) => m.id)).toEqual([id]);
    await page.getByRole('button', { name: 'Switch it off now' }).click();
    await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');
  });
});

test.describe('the proxy learns of the new Machine late', () => {
  // Fly's proxies learn of a started Machine a moment after it starts, while the launcher saw it
  // serve at once over the private network: the hand-over, replayed to it before then, comes
  // back undelivered, and the Machine it landed on has the browser post it again (307).
  test('the hand-over is made again and the visitor lands on their Machine', async ({
    page,
    platform,
    api,
  }) => {
    // A Machine for the hand-over to land on first and be replayed from.
    const bystander = await api.startBystander(platform.launcher);
    const before = (await api.counters())['proxy.replays.fallback'] ?? 0;
    await api.fault({ kind: 'routing_delay', ms: 3000 });
    try {
      await openLauncher(page, platform);
      const id = await launch(page);
      const after = (await api.counters())['proxy.replays.fallback'] ?? 0;
      expect(after, 'the first hand-over came back undelivered').toBeGreaterThan(before);
      await page.getByRole('button', { name: 'Switch it off now' }).click();
      await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');
    } finally {
      await api.clearFaults();
      await api.crash(bystander);
    }
  });
});
