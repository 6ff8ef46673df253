import type { Locator, Page } from '@playwright/test';
import { test, expect } from '../support/fixtures';
import {
  arriveOnMachine,
  expectAccessible,
  launchButton,
  openLauncher,
  openLauncherFrom,
  recordProgress,
  type ProgressSnapshot,
} from '../support/journey';
import { LAUNCHER_APP, type LocalApi } from '../support/local-api';

/** One row of the routing panel: what the request was, its path, how it got here. */
interface Row {
  what: string;
  path: string;
  arrival: string;
}

async function rows(panel: Locator): Promise<Row[]> {
  return panel.locator('tbody tr').evaluateAll((trs) =>
    trs.map((tr) => {
      const cells = tr.querySelectorAll('td');
      const path = cells[1]?.querySelector('code')?.textContent ?? '';
      const what = (cells[1]?.textContent ?? '').replace(path, '').trim();
      return { what, path, arrival: cells[2]?.textContent ?? '' };
    }),
  );
}

/** Opens the panel "How your requests got here" and waits until it lists the page's own
 * requests: the hand-over (answered with the page), its bundle and its live channel. */
async function openPanel(page: Page): Promise<Locator> {
  const panel = page.locator('details.routes');
  await panel.getByText('How your requests got here').click();
  await expect(panel).toHaveAttribute('open', '');
  await expect
    .poll(async () => (await rows(panel)).map((r) => r.what), { message: "the page's requests" })
    .toEqual(expect.arrayContaining(['hand-over', 'bundle file', 'live channel']));
  return panel;
}

/** The last route line the launcher's page showed during the launch. */
function launchRoute(progress: ProgressSnapshot[]): string {
  const lines = progress.map((s) => s.route).filter((r): r is string => !!r);
  expect(lines.length, "the launcher's page showed the launch's route").toBeGreaterThan(0);
  return lines[lines.length - 1];
}

async function launchers(api: LocalApi): Promise<string[]> {
  return (await api.machines()).filter((m) => m.app === LAUNCHER_APP && m.state === 'started').map((m) => m.id);
}

const REPLAYED = /^replayed from [0-9a-f]{14} in [a-z]{3}(, \d+ ms in the replay)?$/;

test('the owner sees how each request of their page reached their Machine, and a receipt at the end', async ({
  page,
  platform,
  api,
}, testInfo) => {
  const progress = await recordProgress(page);
  let id: string;
  if (testInfo.project.name === 'wrong-first') {
    await openLauncher(page, platform);
    await launchButton(page).click();
    id = await arriveOnMachine(page);
  } else {
    // From Sydney, the visitor's Machine is the only one near their edge (the visitors'
    // app's concierge runs in Amsterdam): fly-proxy's nearest Machine is theirs.
    await openLauncherFrom(page, platform.launcher, 'syd', 'Sydney');
    await launchButton(page).click();
    id = await arriveOnMachine(page, { where: ' in Sydney (syd)', distance: '0 km from your edge region, Sydney.' });
  }

  // The launcher's page said which launcher ran the launch and how each call reached it.
  const ran = launchRoute(progress);
  const ids = await launchers(api);
  expect(ran).toMatch(new RegExp(`^Run by launcher Machine (${ids.join('|')}) in [A-Za-z ]+ \\([a-z]{3}\\)\\. Its calls: start — `));
  expect(ran).toMatch(/hand-over — /);

  const panel = await openPanel(page);
  const seen = await rows(panel);
  // Paths, never a query string; the page came as the hand-over's answer, not by a second
  // request.
  expect(seen.find((r) => r.what === 'hand-over')?.path).toBe(`/m/${id}/claim`);
  expect(seen.filter((r) => r.what === 'page')).toEqual([]);
  for (const row of seen) expect(row.path).not.toContain('?');
  const summary = panel.locator('.routes-summary');

  if (testInfo.project.name === 'wrong-first') {
    // Every request reached another Machine first: each was replayed (the source named), or
    // sent straight on by the proxy's replay cache once a replay had taught it.
    for (const row of seen) expect(row.arrival, `${row.what} ${row.path}`).toMatch(/^(replayed from .*|replay cache hit)$/);
    for (const row of seen.filter((r) => r.arrival.startsWith('replayed'))) expect(row.arrival).toMatch(REPLAYED);
    // The hand-over carries no owner cookie yet: the session cache cannot know it.
    expect(seen[0]).toMatchObject({ what: 'hand-over', arrival: expect.stringMatching(REPLAYED) });
    const firstReplay = seen.findIndex((r) => r.arrival.startsWith('replayed'));
    const firstHit = seen.findIndex((r) => r.arrival === 'replay cache hit');
    expect(firstHit, 'a request the replay cache answered').toBeGreaterThan(firstReplay);
    await expect(summary).toHaveText(/^\d+ of \d+ requests were replayed from [a-z, ]+ to ams; the replay cache answered \d+$/, {
      timeout: 5_000,
    });
    // The page's calls to the launcher are pinned to it: the hand-over reached the other
    // launcher first and was replayed.
    expect(ran).toMatch(/hand-over — replayed from [0-9a-f]{14} in [a-z]{3}/);
  } else {
    for (const row of seen) expect(row.arrival, `${row.what} ${row.path}`).toBe('direct');
    await expect(summary).toHaveText(/^\d+ requests came straight to this Machine\.$/, { timeout: 5_000 });
  }
  await expectAccessible(page, 'the Machine page with the routing panel open');
  await page.screenshot({ path: testInfo.outputPath('routing-panel.png'), fullPage: true });

  // The receipt, once the Machine is gone: its launch from the click to its first byte, what
  // it served.
  await page.getByRole('button', { name: 'Switch it off now' }).click();
  const receipt = page.locator('pre.receipt');
  await expect(receipt).toBeVisible({ timeout: 15_000 });
  const text = (await receipt.textContent()) ?? '';
  expect(text).toContain(`Fly Machine ${id}`);
  expect(text).toMatch(/From the click:\n {2}\d+\.\d{3} s {2}launch requested\n/);
  expect(text).toMatch(/ {2}\d+\.\d{3} s {2}hand-over posted\n {2}\d+\.\d{3} s {2}its page's first byte\n/);
  expect(text).toMatch(/Requests served: \d+ \(\d+ replayed, \d+ by the replay cache\)/);
  expect(text).toMatch(/Destroyed: \d{4}-\d\d-\d\dT/);
  // The launch's timeline came with the hand-over's body: the address never held it.
  const address = new URL(page.url());
  expect(address.search + address.hash).toBe('');
  await expectAccessible(page, 'the Machine page with its receipt');
});
