import type { Page } from '@playwright/test';
import { test, expect } from '../support/fixtures';
import {
  expectAccessible,
  expectNoMore,
  expectOwnMachinePage,
  expectRttUpdates,
  launch,
  openLauncher,
} from '../support/journey';

const switchedOff = 'It switched itself off and was destroyed, for good.';

test("a second visitor opening the first visitor's Machine is refused; the owner carries on", async ({
  page,
  platform,
  api,
  newVisitor,
}) => {
  await openLauncher(page, platform);
  const id = await launch(page);
  await expectRttUpdates(page);

  // The stranger knows the URL: refused by the Machine, before any of its pages runs.
  const refused = /\b403\b.*flyby-machines\.localhost:\d+\//;
  const stranger = await newVisitor({ expectedFailures: [refused] });
  const answer = await stranger.page.goto(`${platform.machines}/m/${id}`);
  expect(answer?.status()).toBe(403);
  await expect(stranger.page.getByRole('heading', { level: 1 })).toHaveText('Not your Machine');
  await expect(stranger.page.locator('body')).not.toContainText(id);
  await expectAccessible(stranger.page, 'the refusal page');
  // Nor does the ephemeral app's front door lead the stranger anywhere.
  expect((await stranger.page.goto(`${platform.machines}/`))?.status()).toBe(403);

  // The owner's session is untouched: live channel, reload, and the end are theirs.
  await expectRttUpdates(page);
  await page.reload();
  await expectOwnMachinePage(page, id);
  await expectRttUpdates(page);
  expect((await api.alive()).map((m) => m.id)).toEqual([id]);
  await page.getByRole('button', { name: 'Switch it off now' }).click();
  await expectNoMore(page, api, id, switchedOff);
});

test('two visitors launching at the same time each land on their own Machine', async ({
  page,
  platform,
  api,
  newVisitor,
}, testInfo) => {
  const bob = await newVisitor();
  await Promise.all([openLauncher(page, platform), openLauncher(bob.page, platform)]);
  const reroutedBefore = await api.rerouted();

  const [a, b] = await Promise.all([launch(page), launch(bob.page)]);
  expect(a).not.toBe(b);
  expect((await api.alive()).map((m) => m.id).sort()).toEqual([a, b].sort());
  // Each page is its own Machine's, and shows nothing of the other: only the routing panel
  // may name the other Machine, as the one that replayed a request (ids are public: the
  // launcher's map lists them all).
  expect(await outsideRoutingPanel(page)).not.toContain(b);
  expect(await outsideRoutingPanel(bob.page)).not.toContain(a);
  await Promise.all([expectRttUpdates(page), expectRttUpdates(bob.page)]);

  if (testInfo.project.name === 'wrong-first') {
    // With two visitor Machines, each request first reached the other one and was replayed
    // (or sent straight on by the replay cache the replays filled).
    expect(await api.rerouted(), 'requests rerouted by fly-replay').toBeGreaterThan(reroutedBefore);
  }

  await Promise.all([
    page.getByRole('button', { name: 'Switch it off now' }).click(),
    bob.page.getByRole('button', { name: 'Switch it off now' }).click(),
  ]);
  await Promise.all([expectNoMore(page, api, a, switchedOff), expectNoMore(bob.page, api, b, switchedOff)]);
  expect(await outsideRoutingPanel(page)).not.toContain(b);
});

/** The text of the page's main part, the routing panel left out. */
function outsideRoutingPanel(page: Page): Promise<string> {
  return page.locator('main').evaluate((main) => {
    const copy = main.cloneNode(true) as HTMLElement;
    copy.querySelector('details.routes')?.remove();
    return copy.textContent ?? '';
  });
}
