import { test, expect } from '../support/fixtures';
import {
  arriveOnMachine,
  expectNoMore,
  expectOwnMachinePage,
  expectRttUpdates,
  launchButton,
  openLauncher,
} from '../support/journey';

test('reload and a second tab are still yours; the launcher works in another tab meanwhile', async ({
  page,
  context,
  platform,
  api,
}) => {
  await openLauncher(page, platform);
  // Space on the focused button launches too.
  await launchButton(page).focus();
  await page.keyboard.press('Space');
  const id = await arriveOnMachine(page);
  await expectRttUpdates(page);

  await page.reload();
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
  // the Machine captures it, and its live map shows the Machine.
  const launcher = await context.newPage();
  await openLauncher(launcher, platform);
  const map = launcher.locator('.region-map');
  await expect(map.locator('figcaption')).toHaveText('1 of 8 Machines alive now');
  await expect(map.locator('[data-region=ams]')).toHaveClass(/\balive\b/);
  await launcher.getByRole('button', { name: 'How does this work?' }).click();
  await expect(launcher.locator('#explainer-body')).toBeVisible();

  // Switched off from the second tab: every tab sees the end, and the map empties.
  await second.getByRole('button', { name: 'Switch it off now' }).click();
  const how = 'It switched itself off and was destroyed, for good.';
  await Promise.all([expectNoMore(second, api, id, how), expectNoMore(page, api, id, how)]);
  await expect(map.locator('figcaption')).toHaveText('0 of 8 Machines alive now');
  await expect(map.locator('[data-region=ams]')).not.toHaveClass(/\balive\b/);
});
