// Issue 9 item 7: from the click on "Launch my Machine" to the owner's page hydrated on their
// own Machine, through flyby-local (`--balance wrong-first`, as the e2e suite), split into
// phases, p50 over 10 launches (after one warm-up launch). Prints `ROW|...` lines that
// scripts/bench puts in BENCHMARKS.md (also appended to $FLYBY_BENCH_ROWS when set).
//
// Where the phases come from:
// - the launcher's Prometheus histogram `flyby_launch_phase_seconds` (sum deltas per launch,
//   both launchers): `create` (Machines API create), `start` (wait for `started`), `serving`
//   (polling the new Machine's /health until 200), `total`;
// - the browser: request/response events (node clock) and a MutationObserver in the page
//   (browser clock, same machine) for the launch steps and `body[data-hydrated]`;
// - flyby-local's `/_local/stats` counters for the replays each launch took.
//
// "Our part" is everything but the platform's own work (the API's create and the Machine's
// process start, `create` + `start`): the launch's server side, our server's boot until it
// serves, the hand-over, the page, the bundle and the hydration.
import { test, expect, type Page } from '@playwright/test';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { appendFileSync } from 'node:fs';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');
const LAUNCHES = Number(process.env.FLYBY_BENCH_LAUNCHES ?? 10);

interface Platform {
  proxy: string;
  api: string;
  launcher: string;
  child: ChildProcess;
}

function startLocal(): Promise<Platform> {
  const bin = process.env.FLYBY_LOCAL_BIN ?? path.join(repo, 'target', 'release', 'flyby-local');
  const child = spawn(
    bin,
    [
      '--proxy-addr', '127.0.0.1:0',
      '--api-addr', '127.0.0.1:0',
      '--balance', 'wrong-first',
      // Many launches from one visitor in a few seconds: the product's per-visitor limits
      // would refuse them. Fly's API rate limits stay on.
      '--launcher-env', 'FLYBY_LAUNCHES_PER_MINUTE=600',
      '--launcher-env', 'FLYBY_MAX_MACHINES=30',
      '--launcher-env', 'FLYBY_LOG_FORMAT=json',
    ],
    { cwd: repo, env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'ignore'] },
  );
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      const m = /^flyby-local ready: proxy=(\S+) api=(\S+)/.exec(line);
      if (m) {
        const port = new URL(m[1]).port;
        resolve({ proxy: m[1], api: m[2], launcher: `http://flyby.localhost:${port}`, child });
      }
    });
    child.on('exit', (code) => reject(new Error(`flyby-local exited with ${code}`)));
  });
}

type Sums = Record<string, number>;

async function phaseSums(api: string): Promise<Sums> {
  const machines: any[] = await fetch(`${api}/_local/machines`).then((r) => r.json());
  const sums: Sums = {};
  for (const m of machines.filter((m) => m.app === 'flyby' && m.state === 'started')) {
    const text = await fetch(`http://${m.private_ip}:9091/metrics`).then((r) => r.text());
    for (const line of text.split('\n')) {
      const match = /^flyby_launch_phase_seconds_sum\{phase="(\w+)"\} (\S+)/.exec(line);
      if (match) sums[match[1]] = (sums[match[1]] ?? 0) + Number(match[2]) * 1000;
    }
  }
  return sums;
}

async function replays(api: string): Promise<number> {
  const stats = await fetch(`${api}/_local/stats`).then((r) => r.json());
  const c = stats.counters ?? {};
  return (c['proxy.replays.delivered'] ?? 0) + (c['proxy.replay_cache.hits'] ?? 0);
}

/** Records, in the page, when each launch step and the hydrated mark appear (Date.now()). */
const recorder = () => {
  const w = window as any;
  w.__marks = {};
  const mark = (name: string) => {
    if (!(name in w.__marks)) w.__marks[name] = Date.now();
  };
  // The click as the page sees it: Playwright's own work before it (actionability checks,
  // its round trips to the browser) is not part of a visitor's wait.
  document.addEventListener(
    'click',
    (e) => {
      if ((e.target as Element | null)?.closest?.('button.launch')) mark('clicked');
    },
    true,
  );
  // When the launch request left and its answer arrived, by the page's own resource timing.
  new PerformanceObserver((list) => {
    for (const e of list.getEntries() as PerformanceResourceTiming[]) {
      if (new URL(e.name).pathname === '/api/launch') {
        mark('launch-sent');
        w.__marks['launch-sent'] = performance.timeOrigin + e.startTime;
        w.__marks['launch-answered'] = performance.timeOrigin + e.responseEnd;
      }
    }
  }).observe({ type: 'resource', buffered: true });
  new MutationObserver(() => {
    if (document.body?.hasAttribute('data-hydrated')) mark('hydrated');
    document.querySelectorAll('.steps .step .label').forEach((el) => mark(`step:${el.textContent}`));
  }).observe(document, { subtree: true, childList: true, attributes: true });
};

interface Launch {
  [phase: string]: number;
}

async function launchOnce(page: Page, platform: Platform): Promise<Launch> {
  await page.goto(platform.launcher);
  await expect(page.locator('body[data-hydrated]')).toBeAttached();
  const before = await phaseSums(platform.api);
  const replaysBefore = await replays(platform.api);
  const events: Record<string, number> = {};
  const onResponse = (r: any) => {
    const url = new URL(r.url());
    if (url.pathname === '/api/launch') events.accepted ??= Date.now();
    if (url.pathname === '/api/handover') events.handover ??= Date.now();
    if (/\/m\/[0-9a-f]{14}\/claim$/.test(url.pathname)) events.claimed ??= Date.now();
    if (/^\/m\/[0-9a-f]{14}$/.test(url.pathname)) events.page ??= Date.now();
  };
  const onFinished = (r: any) => {
    if (new URL(r.url()).hostname.startsWith('flyby-machines') && r.url().endsWith('.wasm'))
      events.wasm ??= Date.now();
  };
  page.on('response', onResponse);
  page.on('requestfinished', onFinished);
  const beforeClick = Date.now();
  const launchAnswered = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/launch');
  await page.getByRole('button', { name: 'Launch my Machine' }).click();
  await launchAnswered;
  // Read while the launch runs (it takes the page away once the Machine serves). Without the
  // page's marks, the time before Playwright's click counts.
  const launcherMarks = await page.evaluate(() => (window as any).__marks).catch(() => ({}));
  const clicked: number = launcherMarks?.clicked ?? beforeClick;
  if (launcherMarks?.['launch-answered']) events.accepted = launcherMarks['launch-answered'];
  const sent: number = launcherMarks?.['launch-sent'] ?? NaN;
  await page.waitForURL(/flyby-machines\.localhost:\d+\/m\/[0-9a-f]{14}$/, { timeout: 60_000 });
  await expect(page.locator('body[data-hydrated]')).toBeAttached();
  const marks = await page.evaluate(() => (window as any).__marks);
  page.off('response', onResponse);
  page.off('requestfinished', onFinished);
  const after = await phaseSums(platform.api);
  const d = (p: string) => (after[p] ?? 0) - (before[p] ?? 0);
  const hydrated = marks.hydrated as number;
  const total = hydrated - clicked;
  const create = d('create');
  const start = d('start');
  return {
    total,
    accepted: (events.accepted ?? NaN) - clicked,
    click_to_sent: sent - clicked,
    create,
    start,
    serving: d('serving'),
    launch_total: d('total'),
    handover: (events.claimed ?? NaN) - (events.handover ?? NaN),
    claimed_to_page: (events.page ?? NaN) - (events.claimed ?? NaN),
    page_to_wasm: (events.wasm ?? NaN) - (events.page ?? NaN),
    wasm_to_hydrated: hydrated - (events.wasm ?? NaN),
    after_launch_to_claimed: (events.claimed ?? NaN) - clicked - d('total') - ((events.accepted ?? clicked) - clicked),
    replays: (await replays(platform.api)) - replaysBefore,
    ours: total - create - start,
  };
}

const p50 = (xs: number[]) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : '?');

function row(...cells: string[]) {
  const line = `ROW|${cells.join('|')}`;
  console.log(line);
  if (process.env.FLYBY_BENCH_ROWS) appendFileSync(process.env.FLYBY_BENCH_ROWS, line + '\n');
}

test('click to own page, through flyby-local', async ({ browser }) => {
  const platform = await startLocal();
  try {
    const launches: Launch[] = [];
    for (let i = 0; i <= LAUNCHES; i++) {
      // A fresh visitor each time (no cookies, no cache), as on a first visit.
      const context = await browser.newContext();
      await context.addInitScript(recorder);
      const page = await context.newPage();
      const launch = await launchOnce(page, platform);
      await context.close();
      if (i > 0) launches.push(launch);
      // Fly's Machines API allows 1 create per second (bursts of 3).
      await new Promise((r) => setTimeout(r, 1100));
    }
    const m = (k: string) => p50(launches.map((l) => l[k]));
    row(
      '7',
      `Click to own page hydrated, through flyby-local (wrong-first), p50 of ${launches.length} launches, fresh browser context each`,
      `total ${ms(m('total'))}: click -> launch accepted ${ms(m('accepted'))} (request sent at ${ms(m('click_to_sent'))}); ` +
        `API create ${ms(m('create'))}; start ${ms(m('start'))}; ready (our boot + /health poll) ${ms(m('serving'))}; ` +
        `launch server side ${ms(m('launch_total'))}; progress -> hand-over -> claim posted ${ms(m('after_launch_to_claimed'))}; ` +
        `claim -> page ${ms(m('claimed_to_page'))} (${m('replays')} replays); page -> WASM loaded ${ms(m('page_to_wasm'))}; ` +
        `WASM -> hydrated ${ms(m('wasm_to_hydrated'))}`,
      '-',
      '-',
    );
    const ours = m('ours');
    row(
      '7b',
      'Our part of click to own page: total minus the platform\'s create and process start (p50)',
      ms(ours),
      '< 100 ms',
      ours < 100 ? 'met' : 'NOT met',
    );
  } finally {
    platform.child.kill('SIGINT');
    await new Promise((r) => platform.child.on('exit', r));
  }
});
