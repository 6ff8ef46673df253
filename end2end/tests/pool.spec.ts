import http from 'node:http';
import { test, expect } from '../support/fixtures';
import {
  arriveOnMachine,
  expectAccessible,
  expectCountdown,
  expectRttUpdates,
  expectShowEnds,
  launchButton,
  openLauncherFrom,
  recordProgress,
} from '../support/journey';
import type { PlatformInfo } from '../support/flyby-local';
import { EPHEMERAL_APP, LAUNCHER_APP, waiting, type LocalApi } from '../support/local-api';

// The `pool` platform keeps one warm Machine in Amsterdam (`FLYBY_WARM_POOL=ams=1`), on Fly's
// timings, behind two launchers that each see every request reach the wrong Machine first.

/**
 * The warm Machine waiting in Amsterdam, once the pool has one (created, never started) and
 * every launcher has listed it (each one's `/health` counts the warm Machines it can take).
 */
async function warmMachine(platform: PlatformInfo, api: LocalApi, not?: string): Promise<string> {
  let id: string | undefined;
  await expect
    .poll(
      async () => {
        id = (await api.machines()).find((m) => m.app === EPHEMERAL_APP && waiting(m) && m.region === 'ams' && m.id !== not)?.id;
        return id;
      },
      { message: 'a warm Machine waits in Amsterdam', timeout: 30_000 },
    )
    .toBeTruthy();
  const launchers = (await api.machines()).filter((m) => m.app === LAUNCHER_APP && m.state === 'started');
  for (const launcher of launchers) {
    await expect
      .poll(() => warmSeenBy(platform, launcher.id), {
        message: `launcher ${launcher.id} sees the warm Machine`,
        timeout: 30_000,
      })
      .toBeGreaterThan(0);
  }
  return id!;
}

/** How many warm Machines one launcher can take (its `/health`), through the proxy. */
function warmSeenBy(platform: PlatformInfo, launcher: string): Promise<number> {
  const origin = new URL(platform.launcher);
  return new Promise((resolve, reject) => {
    // Node does not resolve `*.localhost`: the proxy's address, with the launcher's Host.
    const request = http.get(
      {
        host: '127.0.0.1',
        port: origin.port,
        path: '/health',
        headers: { host: origin.host, 'fly-force-instance-id': launcher },
        timeout: 5_000,
      },
      (response) => {
        response.resume();
        resolve(parseInt(String(response.headers['flyby-warm'] ?? '0'), 10));
      },
    );
    request.on('error', reject);
    request.on('timeout', () => request.destroy(new Error('no answer within 5 s')));
  });
}

test('a click starts the warm Machine: the same show on it, destroyed at its end, and the pool refilled', async ({
  page,
  platform,
  api,
}) => {
  const warm = await warmMachine(platform, api);
  const progress = await recordProgress(page);
  await openLauncherFrom(page, platform.launcher, 'ams', 'Amsterdam');
  await launchButton(page).click();
  const id = await arriveOnMachine(page);
  expect(id, 'the visitor got the warm Machine').toBe(warm);
  const labels = progress[progress.length - 1].labels;
  expect(labels, 'the page says the Machine came from the pool').toContain('Started a warm Machine in Amsterdam');
  expect(labels.some((l) => l.startsWith('Created in')), 'nothing was created for the click').toBe(false);
  // The show is the one every Machine gives.
  await expectRttUpdates(page);
  await expectCountdown(page);
  await expectAccessible(page, 'a Machine from the warm pool');
  // Once taken, a pooled Machine is the visitor's like any other: destroyed at the end, never
  // back in the pool; a new one takes its place.
  await expectShowEnds(page, api, id);
  const next = await warmMachine(platform, api, id);
  expect(next).not.toBe(id);
});

test('two visitors click at once with one warm Machine: one gets it, the other is told and gets a new one', async ({
  newVisitor,
  platform,
  api,
}) => {
  const warm = await warmMachine(platform, api);
  const visitors = [await newVisitor(), await newVisitor()];
  const progress = await Promise.all(visitors.map((v) => recordProgress(v.page)));
  for (const v of visitors) await openLauncherFrom(v.page, platform.launcher, 'ams', 'Amsterdam');
  await Promise.all(visitors.map((v) => launchButton(v.page).click()));
  const ids = await Promise.all(visitors.map((v) => arriveOnMachine(v.page)));
  const labels = progress.map((p) => p[p.length - 1].labels);
  const lucky = ids.indexOf(warm);
  expect(lucky, `one of ${ids.join(', ')} is the warm Machine ${warm}`).toBeGreaterThanOrEqual(0);
  const other = 1 - lucky;
  expect(ids[other]).not.toBe(warm);
  expect(labels[lucky]).toContain('Started a warm Machine in Amsterdam');
  expect(labels[other]).toContain('No warm Machine left in Amsterdam: creating one');
  expect(labels[other]).toContain('Created in Amsterdam');
  for (const [i, v] of visitors.entries()) {
    await v.page.getByRole('button', { name: 'Switch it off now' }).click();
    await expect(v.page.getByRole('heading', { name: 'This Machine is no more' })).toBeVisible({ timeout: 10_000 });
    await expect.poll(() => api.state(ids[i]), { timeout: 15_000 }).toBe('destroyed');
  }
});
