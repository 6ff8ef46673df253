import { test, expect, hydrated } from '../support/fixtures';
import {
  arriveOnMachine,
  expectAccessible,
  expectNoMore,
  launchButton,
  openLauncher,
  tabTo,
} from '../support/journey';

test('the launcher hydrates, shows the edge region and the live map', async ({ page, platform }) => {
  await openLauncher(page, platform);
  await expect(page.locator('p.edge')).toHaveText('Your edge region is Amsterdam.');
  const map = page.locator('.region-map');
  await expect(map.locator('figcaption')).toHaveText('0 of 8 Machines alive now');
  await expect(map.locator('[data-region=ams]')).toHaveClass(/\bedge\b/);
  await expect(map.locator('[data-region=syd]')).toHaveClass('region');

  const toggle = page.getByRole('button', { name: 'How does this work?' });
  await expect(toggle).toHaveAttribute('aria-expanded', 'false');
  await toggle.click();
  // Only the hydrated page can open the explainer: the server rendered it closed.
  await expect(page.getByRole('button', { name: 'Hide how it works' })).toHaveAttribute('aria-expanded', 'true');
  await expect(page.locator('#explainer-body')).toBeVisible();
  await expectAccessible(page, 'the launcher with the explainer open');
});

test('keyboard only: Tab to the button, Enter launches, Space switches off', async ({ page, platform, api }) => {
  await openLauncher(page, platform);
  await tabTo(page, launchButton(page));
  await page.keyboard.press('Enter');
  const id = await arriveOnMachine(page);

  const switchOff = page.getByRole('button', { name: 'Switch it off now' });
  await expect(switchOff).toBeEnabled();
  await tabTo(page, switchOff);
  await page.keyboard.press('Space');
  await expect(page.locator('.useless')).toHaveAttribute('data-state', /flipping|off/);
  await expectNoMore(page, api, id, 'It switched itself off and was destroyed, for good.');

  const back = page.getByRole('link', { name: 'Back to the launcher' });
  await tabTo(page, back);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${platform.launcher}/`);
  await hydrated(page);
  await expect(launchButton(page)).toBeEnabled();
});
