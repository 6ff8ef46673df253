import type { Page } from '@playwright/test';
import { test, expect } from '../support/fixtures';
import { arriveOnMachine, expectAccessible, expectNoMore, launchButton, openLauncherFrom } from '../support/journey';

// The `world` platform plays distance and Fly's boot times (`--timings fly`), with three
// launchers and every request reaching a wrong Machine first. A visitor chooses where they
// enter Fly as a browser can: one visit with `?flyby-local-edge=<code>`, which holds for
// every later request of theirs, on both apps.

/** The round trip flyby-local emulates for a hop of `km` (its manual: fibre, route x 1.5, 1 ms). */
function emulatedMs(km: number): number {
  return (2 * km * 1.5) / 200 + 1;
}

/** The round trip the page shows, once it has measured a few. */
async function shownRttMs(page: Page): Promise<number> {
  const rtt = page.locator('.rtt');
  await expect(rtt).toHaveText(/^\d+\.\d ms$/);
  const first = await rtt.textContent();
  await expect.poll(() => rtt.textContent(), { message: 'the round trip updates' }).not.toBe(first);
  return parseFloat((await rtt.textContent())!);
}

/** Never shorter than light allows, and not many times longer (a hop counted twice). */
function expectNear(shownMs: number, km: number) {
  const emulated = emulatedMs(km);
  expect(shownMs, `shown ${shownMs} ms, emulated ${emulated} ms`).toBeGreaterThanOrEqual(emulated * 0.9);
  expect(shownMs, `shown ${shownMs} ms, emulated ${emulated} ms`).toBeLessThanOrEqual(emulated * 3 + 150);
}

async function switchOff(page: Page, api: import('../support/local-api').LocalApi, id: string) {
  // Far from its Machine the page shows its button a good while before its code runs; until
  // then the button is disabled, and the press (which waits for an enabled button, as a
  // visitor does) is never lost.
  await page.getByRole('button', { name: 'Switch it off now' }).click();
  await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');
}

for (const [edge, city] of [
  ['syd', 'Sydney'],
  ['gru', 'São Paulo'],
  ['ams', 'Amsterdam'],
] as const) {
  test(`from ${city}: a Machine in ${city}, its city on the page, the round trip of the hop`, async ({
    page,
    platform,
    api,
  }) => {
    await openLauncherFrom(page, platform.launcher, edge, city);
    await launchButton(page).click();
    const id = await arriveOnMachine(page, {
      where: ` in ${city} (${edge})`,
      distance: `0 km from your edge region, ${city}.`,
    });
    expect((await api.alive()).find((m) => m.id === id)?.region).toBe(edge);
    expectNear(await shownRttMs(page), 0);
    await switchOff(page, api, id);
  });
}

test('from Sydney with Sydney full: the next-nearest region, how far it is, and its round trip', async ({
  page,
  platform,
  api,
}) => {
  await api.fault({ kind: 'no_capacity', region: 'syd' });
  try {
    await openLauncherFrom(page, platform.launcher, 'syd', 'Sydney');
    await launchButton(page).click();
    await page.waitForURL(/\/m\/[0-9a-f]{14}$/, { timeout: 30_000 });
    const id = /\/m\/([0-9a-f]{14})$/.exec(page.url())![1];
    const region = (await api.alive()).find((m) => m.id === id)!.region;
    expect(region).not.toBe('syd');
    const distance = page.locator('.distance');
    await expect(distance).toHaveText(/^\d+ km from your edge region, Sydney\.$/);
    const km = parseInt((await distance.textContent())!, 10);
    expect(km).toBeGreaterThan(1000);
    await expect(page.getByRole('heading', { level: 1 })).toContainText(`(${region})`);
    expectNear(await shownRttMs(page), km);
    await expectAccessible(page, 'a Machine far from its visitor');
    await switchOff(page, api, id);
  } finally {
    await api.clearFaults();
  }
});

test('from an edge flyby does not know: a Machine all the same, and a page that says only the code', async ({
  page,
  platform,
  api,
}) => {
  await openLauncherFrom(page, platform.launcher, 'zzz', 'zzz');
  await launchButton(page).click();
  // Without a known edge, flyby asks for no region: Fly (here, flyby-local's own edge) picks.
  const id = await arriveOnMachine(page, { where: ' in Amsterdam (ams)', distance: 'Your edge region is zzz.' });
  await expectAccessible(page, 'a Machine for an unknown edge');
  await switchOff(page, api, id);
});

test('from Amsterdam, Sydney picked on the map with the keyboard: the Machine is in Sydney, far away', async ({
  page,
  platform,
  api,
}) => {
  await openLauncherFrom(page, platform.launcher, 'ams', 'Amsterdam');
  const sydney = page.locator('.region-map [data-region=syd]');
  await expect(sydney).toHaveAttribute('role', 'button');
  await expect(sydney).toHaveAccessibleName(/^Launch in Sydney — 16,\d00 km from you$/);
  await expectAccessible(page, 'the launcher with its region controls');
  await sydney.focus();
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/m\/[0-9a-f]{14}$/, { timeout: 30_000 });
  const id = /\/m\/([0-9a-f]{14})$/.exec(page.url())![1];
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(`This is Fly Machine ${id} in Sydney (syd)`);
  expect((await api.alive()).find((m) => m.id === id)?.region).toBe('syd');
  const distance = page.locator('.distance');
  await expect(distance).toHaveText(/^16\d\d\d km from your edge region, Amsterdam\.$/);
  expectNear(await shownRttMs(page), parseInt((await distance.textContent())!, 10));
  await switchOff(page, api, id);
});

test('from Sydney, São Paulo pressed on the map with a pointer (on its dot): the Machine is in São Paulo', async ({
  page,
  platform,
  api,
}) => {
  await openLauncherFrom(page, platform.launcher, 'syd', 'Sydney');
  // The dot inside the region's control: the map takes the press for the region around it.
  await page.locator('.region-map [data-region=gru] circle').first().click();
  await page.waitForURL(/\/m\/[0-9a-f]{14}$/, { timeout: 30_000 });
  const id = /\/m\/([0-9a-f]{14})$/.exec(page.url())![1];
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(`This is Fly Machine ${id} in São Paulo (gru)`);
  expect((await api.alive()).find((m) => m.id === id)?.region).toBe('gru');
  await switchOff(page, api, id);
});
