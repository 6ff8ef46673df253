import { test, expect } from '../support/fixtures';
import {
  arriveOnMachine,
  expectNoMore,
  expectOwnMachinePage,
  expectRttUpdates,
  launchButton,
  openLauncher,
} from '../support/journey';

test('reload and a second tab are still yours; the launcher works in another tab meanwhile, and marks your Machine for you only', async ({
  page,
  context,
  platform,
  api,
  newVisitor,
}) => {
  await openLauncher(page, platform);
  // Space on the focused button launches too.
  await launchButton(page).focus();
  await page.keyboard.press('Space');
  const id = await arriveOnMachine(page);
  await expectRttUpdates(page);

  // The page came as the hand-over's answer, and took its own address: a reload loads it
  // (a GET), never posts the hand-over again.
  expect(new URL(page.url()).pathname).toBe(`/m/${id}`);
  const [reloaded] = await Promise.all([page.waitForRequest((r) => r.isNavigationRequest()), page.reload()]);
  expect(`${reloaded.method()} ${new URL(reloaded.url()).pathname}`).toBe(`GET /m/${id}`);
  await expectOwnMachinePage(page, id);
  await expectRttUpdates(page);

  const second = await context.newPage();
  await second.goto(`${platform.machines}/m/${id}`);
  await expectOwnMachinePage(second, id);
  await expectRttUpdates(second);

  // The ephemeral app's front door leads the owner to their Machine.
  const front = await context.newPage();
  await front.goto(`${platform.machines}/`);
  await expectOwnMachinePage(front, id);
  await front.close();

  // The launcher, opened while the Machine lives, is the launcher: no pin of the launch or of
  // the Machine captures it, and its live map shows the Machine, marked as the visitor's.
  const launcher = await context.newPage();
  await openLauncher(launcher, platform);
  const map = launcher.locator('.region-map');
  await expect(map.locator('figcaption')).toHaveText('1 of 8 Machines alive now, yours in Amsterdam');
  const ams = map.locator('[data-region=ams]');
  await expect(ams).toHaveClass(/\balive\b.*\byours\b/);
  await expect(ams).toHaveAccessibleName(/^Your Machine runs here\. Launch in Amsterdam/);
  await expect(ams.locator('.yours-mark')).toHaveCount(1);
  // The land the dots sit on, a static file the browser may keep for a day.
  // Fetched by the page itself: Node cannot resolve `*.localhost`, and the browser's own
  // Accept-Encoding is what a visitor sends.
  const land = await launcher.evaluate(async () => {
    const r = await fetch('/land-110m.svg');
    return {
      status: r.status,
      cache: r.headers.get('cache-control'),
      encoding: r.headers.get('content-encoding'),
      text: await r.text(),
    };
  });
  expect(land.status).toBe(200);
  expect(land.cache).toBe('public, max-age=86400');
  expect(['br', 'gzip'], 'served precompressed').toContain(land.encoding);
  expect(land.text).toContain('<path');
  await expect(map.locator('image.land')).toHaveAttribute('href', '/land-110m.svg');

  // Someone else sees the Machine alive, and nothing of whose it is.
  const stranger = await newVisitor();
  await openLauncher(stranger.page, platform);
  const theirs = stranger.page.locator('.region-map');
  await expect(theirs.locator('figcaption')).toHaveText('1 of 8 Machines alive now');
  await expect(theirs.locator('[data-region=ams]')).toHaveClass('region alive edge');
  await expect(theirs.locator('.yours-mark')).toHaveCount(0);
  await expect(theirs).not.toContainText('yours');
  await launcher.getByRole('button', { name: 'How does this work?' }).click();
  await expect(launcher.locator('#explainer-body')).toBeVisible();

  // Switched off from the second tab: every tab sees the end, and the map empties.
  await second.getByRole('button', { name: 'Switch it off now' }).click();
  const how = 'It switched itself off and was destroyed, for good.';
  await Promise.all([expectNoMore(second, api, id, how), expectNoMore(page, api, id, how)]);
  await expect(map.locator('figcaption')).toHaveText('0 of 8 Machines alive now');
  await expect(map.locator('[data-region=ams]')).not.toHaveClass(/\balive\b/);
});
