import { test, expect, hydrated } from '../support/fixtures';

test('the launcher page hydrates and responds to a click', async ({ page }) => {
  await page.goto(process.env.LAUNCHER_URL!);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('flyby');
  await hydrated(page);
  await expect(page.locator('body')).toHaveAttribute('data-role', 'launcher');

  const toggle = page.getByRole('button', { name: 'How does this work?' });
  await expect(toggle).toHaveAttribute('aria-expanded', 'false');
  await toggle.click();
  // Only the hydrated page can open the explainer: the server rendered it closed.
  await expect(page.getByRole('button', { name: 'Hide how it works' })).toHaveAttribute('aria-expanded', 'true');
  await expect(page.locator('#explainer-body')).toBeVisible();
});

test('a visitor launches, lands on their own Machine, and sees it end', async ({ page }) => {
  await page.goto(process.env.LAUNCHER_URL!);
  await hydrated(page);
  await page.getByRole('button', { name: 'Launch my Machine' }).click();
  const steps = page.locator('.steps .step .label');
  await expect(steps.first()).toHaveText('Requested');
  await page.waitForURL(/flyby-machines\.localhost:\d+\/m\/[0-9a-f]{14}$/);
  await hydrated(page);
  await expect(page.locator('body')).toHaveAttribute('data-role', 'ephemeral');
  const id = new URL(page.url()).pathname.split('/').pop()!;
  await expect(page.getByRole('heading', { level: 1 })).toContainText(`This is Fly Machine ${id} in Amsterdam`);
  await expect(page.locator('.rtt')).toHaveText(/\d+\.\d ms/);
  await page.getByRole('button', { name: 'Switch it off now' }).click();
  await expect(page.locator('.useless')).toHaveAttribute('data-state', /flipping|off/);
  await expect(page.getByRole('heading', { name: 'This Machine is no more' })).toBeVisible();
  await page.getByRole('link', { name: 'Back to the launcher' }).click();
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('flyby');
});
