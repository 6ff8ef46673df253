import AxeBuilder from '@axe-core/playwright';
import { expect, type Locator, type Page } from '@playwright/test';
import type { PlatformInfo } from './flyby-local';
import type { LocalApi } from './local-api';
import { hydrated } from './fixtures';

/** The steps every successful launch shows, in this order ("Waiting for a slot" may join). */
export const LAUNCH_STEPS = ['Requested', 'Created in Amsterdam', 'Started', 'Serving', 'Sending you there'];

/** The URL of a visitor's Machine page; group 1 is the Machine id. */
export const MACHINE_URL = /^http:\/\/flyby-machines\.localhost:\d+\/m\/([0-9a-f]{14})$/;

/** What the launch progress showed at one moment. */
export interface ProgressSnapshot {
  labels: string[];
  ats: string[];
  timer: string | null;
  /** The launch's route line: which launcher ran it and how the page's calls reached it. */
  route: string | null;
}

/**
 * Records every state of the launch progress the page shows, from a MutationObserver in the
 * page. The progress lasts well under a second locally and the page leaves for the Machine at
 * its end, so polling the DOM from the test could miss steps; the observer misses none.
 * Call before the launcher page is opened.
 */
export async function recordProgress(page: Page): Promise<ProgressSnapshot[]> {
  const snapshots: ProgressSnapshot[] = [];
  await page.exposeBinding('__flybyProgress', (_source, snapshot: ProgressSnapshot) => {
    snapshots.push(snapshot);
  });
  await page.addInitScript(() => {
    let last = '';
    const report = () => {
      const steps = Array.from(document.querySelectorAll('.steps .step'));
      if (steps.length === 0) return;
      const snapshot = {
        labels: steps.map((s) => s.querySelector('.label')?.textContent ?? ''),
        ats: steps.map((s) => s.querySelector('.at')?.textContent ?? ''),
        timer: document.querySelector('.progress .timer')?.textContent ?? null,
        route: document.querySelector('.progress .launch-route')?.textContent ?? null,
      };
      const key = JSON.stringify(snapshot);
      if (key !== last) {
        last = key;
        (window as unknown as { __flybyProgress: (s: unknown) => void }).__flybyProgress(snapshot);
      }
    };
    new MutationObserver(report).observe(document, { childList: true, subtree: true, characterData: true });
  });
  return snapshots;
}

/** Every step appeared, in order, each with its time, times never going back. */
export function expectProgressInOrder(snapshots: ProgressSnapshot[]) {
  expect(snapshots.length, 'the launch progress was shown').toBeGreaterThan(0);
  const final = snapshots[snapshots.length - 1];
  const shown = final.labels.filter((l) => l !== 'Waiting for a slot');
  expect(shown, 'the steps of the launch, in order').toEqual(LAUNCH_STEPS);
  // Steps only ever get added at the end: each state shown is a beginning of the final one.
  for (const s of snapshots) expect(final.labels.slice(0, s.labels.length)).toEqual(s.labels);
  for (const at of final.ats) expect(at).toMatch(/^\d+\.\d\d s$/);
  const times = final.ats.map((at) => parseFloat(at));
  expect([...times].sort((a, b) => a - b), 'step times never go back').toEqual(times);
  const timers = snapshots.map((s) => s.timer).filter((t): t is string => t !== null);
  for (const t of timers) expect(t).toMatch(/^\d+\.\d s$/);
  const ticks = timers.map((t) => parseFloat(t));
  expect([...ticks].sort((a, b) => a - b), 'the timer counts up').toEqual(ticks);
}

/** Opens the launcher and waits for it to be interactive. */
export async function openLauncher(page: Page, platform: PlatformInfo) {
  await page.goto(`${platform.launcher}/`);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('flyby');
  await hydrated(page);
  await expect(page.locator('body')).toHaveAttribute('data-role', 'launcher');
  await expect(launchButton(page)).toBeEnabled();
}

/**
 * Opens the launcher entering Fly at `edge` (flyby-local's `?flyby-local-edge=`, which holds
 * for every later request of this browser), and checks the page says so.
 */
export async function openLauncherFrom(page: Page, launcher: string, edge: string, city: string) {
  await page.goto(`${launcher}/?flyby-local-edge=${edge}`);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('flyby');
  await hydrated(page);
  await expect(page.locator('p.edge')).toHaveText(`Your edge region is ${city}.`);
  await expect(launchButton(page)).toBeEnabled();
}

export function launchButton(page: Page): Locator {
  return page.getByRole('button', { name: 'Launch my Machine' });
}

/** Where a Machine runs and how far its visitor's edge is, as its page says. */
export interface Whereabouts {
  /** The h1's ending, e.g. ` in Amsterdam (ams)`. */
  where: string;
  /** The distance line. */
  distance: string;
}

/** A Machine in Amsterdam for a visitor at Amsterdam's edge: the default platform's world. */
export const IN_AMSTERDAM: Whereabouts = {
  where: ' in Amsterdam (ams)',
  distance: '0 km from your edge region, Amsterdam.',
};

/** Waits until the page is on its own Machine (hand-over done, hydrated); returns its id. */
export async function arriveOnMachine(page: Page, whereabouts = IN_AMSTERDAM): Promise<string> {
  await page.waitForURL(MACHINE_URL, { timeout: 30_000 });
  const id = MACHINE_URL.exec(page.url())![1];
  await expectOwnMachinePage(page, id, whereabouts);
  return id;
}

/** Pushes the button and follows the launch to the visitor's Machine; returns its id. */
export async function launch(page: Page): Promise<string> {
  await launchButton(page).click();
  return arriveOnMachine(page);
}

/** The page of Machine `id`, hydrated, alive, telling where it runs. */
export async function expectOwnMachinePage(page: Page, id: string, whereabouts = IN_AMSTERDAM) {
  await expect(page).toHaveURL(MACHINE_URL);
  expect(MACHINE_URL.exec(page.url())![1]).toBe(id);
  await expect(page.locator('body')).toHaveAttribute('data-role', 'ephemeral');
  await hydrated(page);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(`This is Fly Machine ${id}${whereabouts.where}`);
  await expect(page.locator('.machine-id')).toHaveText(id);
  await expect(page.locator('.distance')).toHaveText(whereabouts.distance);
  await expect(page.locator('.useless')).toHaveAttribute('data-state', 'on');
}

/** The round trip is measured, and measured again: the value shown changes. */
export async function expectRttUpdates(page: Page) {
  const rtt = page.locator('.rtt');
  await expect(rtt).toHaveText(/^\d+\.\d ms$/);
  const first = await rtt.textContent();
  await expect.poll(() => rtt.textContent(), { message: 'the round-trip time updates' }).not.toBe(first);
  await expect(rtt).toHaveText(/^\d+\.\d ms$/);
}

/** The countdown shows whole seconds and goes down. */
export async function expectCountdown(page: Page) {
  const countdown = page.locator('.countdown');
  await expect(countdown).toHaveText(/^\d+ s$/);
  const first = parseInt((await countdown.textContent())!, 10);
  await expect
    .poll(async () => parseInt((await countdown.textContent()) ?? '', 10), { message: 'the countdown goes down' })
    .toBeLessThan(first);
}

/**
 * The show ends: the hand flips the switch, the switch is off, and the page says the Machine
 * is no more — and still says so once the platform has destroyed the Machine.
 */
export async function expectShowEnds(page: Page, api: LocalApi, id: string, how = 'It switched itself off and was destroyed, for good.') {
  const box = page.locator('.useless');
  await expect(box).toHaveAttribute('data-state', 'flipping', { timeout: 30_000 });
  await expect(box).toHaveAttribute('data-state', 'off', { timeout: 10_000 });
  await expectNoMore(page, api, id, how);
}

/** "This Machine is no more", while the Machine is destroyed, with a way back. */
export async function expectNoMore(page: Page, api: LocalApi, id: string, how: string) {
  const noMore = page.getByRole('heading', { name: 'This Machine is no more' });
  await expect(noMore).toBeVisible({ timeout: 10_000 });
  await expect(page.locator('.no-more')).toContainText(how);
  await expect.poll(() => api.state(id), { message: `Machine ${id} is destroyed`, timeout: 15_000 }).toBe('destroyed');
  await expect(noMore).toBeVisible();
  await expect(page.locator('.useless')).toHaveAttribute('data-state', 'off');
  await expect(page.getByRole('button', { name: 'Switch it off now' })).toHaveCount(0);
  await expect(page.getByRole('link', { name: 'Back to the launcher' })).toBeVisible();
}

/** Follows "Back to the launcher" and checks the launcher works. */
export async function backToLauncher(page: Page, platform: PlatformInfo) {
  await page.getByRole('link', { name: 'Back to the launcher' }).click();
  await page.waitForURL(`${platform.launcher}/`);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('flyby');
  await hydrated(page);
  await expect(launchButton(page)).toBeEnabled();
}

/** Presses Tab until `target` has the focus (at most `max` times); fails if it never does. */
export async function tabTo(page: Page, target: Locator, max = 12) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (await target.evaluate((el) => el === document.activeElement)) return;
  }
  await expect(target, `reachable with Tab within ${max} presses`).toBeFocused({ timeout: 1 });
}

/** axe-core on the page as it is now: no serious or critical violation. */
export async function expectAccessible(page: Page, what: string) {
  const results = await new AxeBuilder({ page }).analyze();
  const serious = results.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  expect(serious, `accessibility of ${what}`).toEqual([]);
}
