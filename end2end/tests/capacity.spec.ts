import { test, expect } from '../support/fixtures';
import { expectAccessible, expectNoMore, launch, launchButton, openLauncher } from '../support/journey';

// Runs on the `capacity` platform: room for one visitor Machine, one launcher.
test('capacity full: the next visitor is told so, and can launch once there is room', async ({
  page,
  platform,
  api,
  newVisitor,
}) => {
  const how = 'It switched itself off and was destroyed, for good.';
  await openLauncher(page, platform);
  const a = await launch(page);

  const bob = await newVisitor();
  await openLauncher(bob.page, platform);
  const caption = bob.page.locator('.region-map figcaption');
  await expect(caption).toHaveText('1 of 1 Machines alive now');
  await launchButton(bob.page).click();
  const error = bob.page.locator('.error[role=alert]');
  await expect(error).toContainText('capacity reached');
  await expect(error).toContainText('try again in a minute');
  await expect(launchButton(bob.page)).toBeEnabled();
  await expectAccessible(bob.page, 'the launcher saying capacity is reached');
  expect((await api.alive()).map((m) => m.id), 'nothing created for the second visitor').toEqual([a]);

  // The first visitor's Machine goes; the live map tells the second there is room again.
  await page.getByRole('button', { name: 'Switch it off now' }).click();
  await expectNoMore(page, api, a, how);
  await expect(caption).toHaveText('0 of 1 Machines alive now');

  const b = await launch(bob.page);
  expect(b).not.toBe(a);
  await bob.page.getByRole('button', { name: 'Switch it off now' }).click();
  await expectNoMore(bob.page, api, b, how);
});
