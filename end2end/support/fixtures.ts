import { test as base, expect, type Page } from '@playwright/test';

/**
 * Every test page fails its test on a console error, an uncaught exception or a failed
 * request, unless the test itself declares the failure it provokes.
 */
export const test = base.extend<{ page: Page; expectedFailures: RegExp[] }>({
  expectedFailures: [[], { option: true }],
  page: async ({ page, expectedFailures }, use) => {
    const problems: string[] = [];
    const expected = (text: string) => expectedFailures.some((re) => re.test(text));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && !expected(msg.text())) problems.push(`console: ${msg.text()}`);
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('requestfailed', (req) => {
      const line = `request failed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`;
      if (!expected(line)) problems.push(line);
    });
    page.on('response', (res) => {
      const line = `HTTP ${res.status()}: ${res.request().method()} ${res.url()}`;
      if (res.status() >= 400 && !expected(line)) problems.push(line);
    });
    await use(page);
    expect(problems, 'console errors, page errors or failed requests').toEqual([]);
  },
});

export { expect };

/** Waits until the WASM bundle has hydrated the page. */
export async function hydrated(page: Page) {
  await expect(page.locator('body[data-hydrated]')).toBeAttached();
}
