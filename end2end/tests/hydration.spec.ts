import { test, expect, hydrated } from '../support/fixtures';

const roles = [
  { name: 'launcher', url: () => process.env.LAUNCHER_URL!, heading: 'flyby' },
  { name: 'ephemeral', url: () => process.env.EPHEMERAL_URL!, heading: 'Your own Fly Machine' },
];

for (const role of roles) {
  test(`the ${role.name} page hydrates and responds to a click`, async ({ page }) => {
    await page.goto(role.url());
    await expect(page.getByRole('heading', { level: 1 })).toHaveText(role.heading);
    await hydrated(page);
    await expect(page.locator('body')).toHaveAttribute('data-role', role.name);

    const toggle = page.getByRole('button', { name: 'How does this work?' });
    await expect(toggle).toHaveAttribute('aria-expanded', 'false');
    await toggle.click();
    // Only the hydrated page can open the explainer: the server rendered it closed.
    await expect(page.getByRole('button', { name: 'Hide how it works' })).toHaveAttribute(
      'aria-expanded',
      'true',
    );
    await expect(page.locator('#explainer-body')).toBeVisible();
  });
}
