// Row 7 of BENCHMARKS.md: from the click on "Launch my Machine" to the owner's page hydrated on their
// own Machine, through flyby-local (`--balance wrong-first`, as the e2e suite), split into
// phases, p50 over 10 launches (after one warm-up launch). Prints `ROW|...` lines that
// scripts/bench puts in BENCHMARKS.md (also appended to $FLYBY_BENCH_ROWS when set).
//
// Where the phases come from:
// - the launcher's Prometheus histogram `flyby_launch_phase_seconds` (sum deltas per launch,
//   both launchers): `create` (Machines API create), `start` (wait for `started`), `serving`
//   (polling the new Machine's /health until 200), `total`;
// - the pages' own clocks (Date.now(), performance.timeOrigin: one machine, one clock): the
//   click (a capture-phase listener), the launch request (resource timing) on the launcher's
//   page; on the Machine's page, whose time origin is the hand-over form's submission, the
//   page (the hand-over's answer), the bundle (resource timing), DOMContentLoaded, and
//   `body[data-hydrated]` (a MutationObserver);
// - flyby-local's `/_local/stats` counters for the replays each launch took.
//
// "Our part" is everything but the platform's own work (the API's create and the Machine's
// process start, `create` + `start`): the launch's server side, our server's boot until it
// serves, the hand-over, the page, the bundle and the hydration. Part of it is the browser's
// own work for any cross-site hand-over (a new renderer process, two navigations): a bare pair
// of pages doing the same hand-over is timed side by side (startFloor), and what a launch
// takes beyond that floor is what our code adds (row 7d, the budget's figure).
import { test, expect, type Browser } from '@playwright/test';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';
import * as trace from './trace';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');
const LAUNCHES = Number(process.env.FLYBY_BENCH_LAUNCHES ?? 10);

interface Platform {
  proxy: string;
  api: string;
  launcher: string;
  child: ChildProcess;
}

function startLocal(extra: string[] = []): Promise<Platform> {
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
      ...extra,
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

/**
 * The browser's own floor for the same hand-over, measured side by side: two sites on a bare
 * node server, no WASM, no framework. The first page's button makes one same-site POST (the
 * launch), then posts a form to the other site, which answers with a page (as a Machine answers
 * its hand-over) that takes its own address and marks itself hydrated from inline scripts. What
 * a launch takes beyond this (and beyond the platform's create and start) is what our code adds.
 */
function startFloor(): Promise<{ url: string; close: () => void }> {
  const server = createServer((req, res) => {
    const host = (req.headers.host ?? '').split(':')[0];
    const port = (req.headers.host ?? '').split(':')[1];
    const html = (body: string) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>floor</title><link rel="icon" href="data:,"></head><body>${body}</body></html>`);
    };
    if (host === 'floor-a.localhost' && req.method === 'GET') {
      html(`<button type="button" class="launch">Launch my Machine</button>
<form method="post" action="http://floor-b.localhost:${port}/m/page/claim"><input type="hidden" name="secret" value="s"></form>
<script>
document.querySelector('button').onclick = () => fetch('/launch', { method: 'POST' }).then((r) => r.text()).then(() => document.forms[0].submit());
document.body.setAttribute('data-hydrated', '');
</script>`);
    } else if (host === 'floor-a.localhost') {
      req.resume();
      req.on('end', () => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
    } else if (req.url === '/m/page/claim') {
      // As the Machine answers its hand-over: with the page itself, which takes its own address.
      req.resume();
      req.on('end', () => {
        res.setHeader('set-cookie', 'owner=s; HttpOnly; SameSite=Lax; Path=/');
        html(`<script>history.replaceState(null, '', '/m/page')</script><h1>Your Machine</h1><script>document.body.setAttribute('data-hydrated', '')</script>`);
      });
    } else {
      html(`<h1>Your Machine</h1><script>document.body.setAttribute('data-hydrated', '')</script>`);
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      resolve({ url: `http://floor-a.localhost:${port}/`, close: () => server.close() });
    });
  });
}

async function floorOnce(browser: Browser, url: string, tracePath?: string): Promise<number> {
  const { context, page, marks, hydrated } = await visitor(browser);
  await page.goto(url);
  await hydrated(new URL(url).host);
  if (tracePath) await trace.start(browser, page, tracePath);
  await page.getByRole('button', { name: 'Launch my Machine' }).click();
  const done = await hydrated(new URL(url).host.replace('floor-a', 'floor-b'));
  if (tracePath) await browser.stopTracing();
  await context.close();
  return done - marks.clicked;
}

type Sums = Record<string, number>;

async function phaseSums(api: string): Promise<Sums> {
  const machines: any[] = await fetch(`${api}/_local/machines`).then((r) => r.json());
  const sums: Sums = {};
  for (const m of machines.filter((m) => m.app === 'flyby' && m.state === 'started')) {
    // Through the admin endpoint: the host may not reach a Machine's own addresses.
    const text = await fetch(`${api}/_local/machines/${m.id}/metrics`)
      .then((r) => (r.ok ? r.text() : ''))
      .catch(() => '');
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

/**
 * Runs in every page of a visitor's browser context: reports the click, the launch request and
 * the hydrated mark (Date.now() clocks) to the bench through the `__flybyMark` binding, so that
 * nothing of Playwright's (its injected script, an evaluation) runs in a page before it is
 * hydrated.
 */
const recorder = () => {
  const w = window as any;
  const seen = new Set<string>();
  const mark = (name: string, at = Date.now()) => {
    if (!seen.has(name)) {
      seen.add(name);
      w.__flybyMark(name, at);
    }
  };
  // The click as the page sees it: Playwright's own work before it (actionability checks,
  // its round trips to the browser) is not part of a visitor's wait.
  document.addEventListener(
    'click',
    (e) => {
      if ((e.target as Element | null)?.closest?.('button.launch, .region-map [data-region]')) mark('clicked');
    },
    true,
  );
  // When the launch request left and its answer arrived, by the page's own resource timing.
  new PerformanceObserver((list) => {
    for (const e of list.getEntries() as PerformanceResourceTiming[]) {
      if (new URL(e.name).pathname === '/api/launch') {
        mark('launch-sent', performance.timeOrigin + e.startTime);
        mark('launch-answered', performance.timeOrigin + e.responseEnd);
      }
    }
  }).observe({ type: 'resource', buffered: true });
  new MutationObserver(() => {
    if (document.body?.hasAttribute('data-hydrated') && !seen.has(`hydrated:${location.host}`)) {
      performance.mark('flyby-hydrated'); // trace.HYDRATED_MARK (this function runs in the page)
      mark(`hydrated:${location.host}`);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
};

let visitors = 0;

/** A fresh visitor (no cookies, no cache, an address of their own: a visitor who has a
 * Machine gets it back on a second press), and the marks its pages report. */
async function visitor(browser: Browser) {
  visitors += 1;
  const context = await browser.newContext({
    extraHTTPHeaders: { 'flyby-local-client-ip': `10.77.${Math.floor(visitors / 250)}.${(visitors % 250) + 1}` },
  });
  const marks: Record<string, number> = {};
  const waiters: Array<() => void> = [];
  await context.exposeBinding('__flybyMark', (_source, name: string, at: number) => {
    marks[name] ??= at;
    waiters.splice(0).forEach((wake) => wake());
  });
  await context.addInitScript(recorder);
  /** Resolves once the page on `host` has reported itself hydrated. */
  const hydrated = async (host: string) => {
    const deadline = Date.now() + 60_000;
    while (!(`hydrated:${host}` in marks)) {
      if (Date.now() > deadline) throw new Error(`no page on ${host} hydrated within 60 s`);
      await new Promise<void>((wake) => {
        waiters.push(wake);
        setTimeout(wake, 1000);
      });
    }
    return marks[`hydrated:${host}`];
  };
  return { context, page: await context.newPage(), marks, hydrated };
}

interface Launch {
  [phase: string]: number;
}

/** Where a launch starts from: the launcher's URL (with a query, for another edge), and what
 * the visitor presses (the button, or a region on the map). */
interface Press {
  url?: string;
  region?: string;
}

async function launchOnce(browser: Browser, platform: Platform, tracePath?: string, press: Press = {}): Promise<Launch> {
  const { context, page, marks, hydrated } = await visitor(browser);
  await page.goto(press.url ?? platform.launcher);
  await hydrated(new URL(platform.launcher).host);
  const before = await phaseSums(platform.api);
  const replaysBefore = await replays(platform.api);
  if (tracePath) await trace.start(browser, page, tracePath);
  if (press.region) await page.locator(`.region-map [data-region=${press.region}]`).click();
  else await page.getByRole('button', { name: 'Launch my Machine' }).click();
  const machineHost = new URL(platform.launcher).host.replace('flyby.', 'flyby-machines.');
  await hydrated(machineHost);
  if (tracePath) await browser.stopTracing();
  // Read once it is hydrated, the Machine's page by its own clocks: its time origin is the
  // hand-over form's submission; the hand-over answers with the page (a 303 would be its
  // redirect).
  const machine = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming;
    const bundle = performance
      .getEntriesByType('resource')
      .filter((e) => /\.(js|wasm)$/.test(new URL(e.name).pathname))
      .map((e) => (e as PerformanceResourceTiming).responseEnd);
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    return {
      submitted: performance.timeOrigin,
      // With a 303 after the claim, when its GET began; 0 when the claim answers with the page.
      claimed: nav.redirectEnd,
      page: nav.responseEnd,
      parsed: nav.domContentLoadedEventStart,
      bundle: Math.max(...bundle),
      painted: fcp ? fcp.startTime : NaN,
    };
  });
  expect(page.url()).toMatch(/\/m\/[0-9a-f]{14}$/);
  await context.close();
  const clicked = marks.clicked;
  const hydratedAt = marks[`hydrated:${machineHost}`] - machine.submitted;
  const after = await phaseSums(platform.api);
  const d = (p: string) => (after[p] ?? 0) - (before[p] ?? 0);
  const accepted = marks['launch-answered'] - clicked;
  const total = machine.submitted + hydratedAt - clicked;
  const create = d('create');
  const start = d('start');
  return {
    total,
    accepted,
    click_to_sent: marks['launch-sent'] - clicked,
    create,
    start,
    serving: d('serving'),
    launch_total: d('total'),
    // From the Machine serving (the launch's server side is done) to the form's submission:
    // the progress channel, the hand-over request, the form.
    handover: machine.submitted - clicked - accepted - d('total'),
    claim: machine.claimed,
    page: machine.page - machine.claimed,
    // The own page's first contentful paint (its Machine id, before hydration), after the click.
    painted: machine.submitted + machine.painted - clicked,
    bundle: machine.bundle - machine.page,
    parsed: machine.parsed - machine.page,
    hydrated: hydratedAt - Math.max(machine.bundle, machine.parsed),
    replays: (await replays(platform.api)) - replaysBefore,
    ours: total - create - start,
  };
}

const p50 = (xs: number[]) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
const p95 = (xs: number[]) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(s.length * 0.95))] : NaN;
};
const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : '?');

function row(...cells: string[]) {
  const line = `ROW|${cells.join('|')}`;
  console.log(line);
  if (process.env.FLYBY_BENCH_ROWS) appendFileSync(process.env.FLYBY_BENCH_ROWS, line + '\n');
}

test('click to own page, through flyby-local', async ({ browser }) => {
  const platform = await startLocal();
  const floor = await startFloor();
  try {
    const launches: Launch[] = [];
    const floors: number[] = [];
    for (let i = 0; i <= LAUNCHES; i++) {
      // A fresh visitor each time (no cookies, no cache), as on a first visit.
      const tracePath = i === LAUNCHES ? process.env.FLYBY_BENCH_TRACE : undefined;
      const launch = await launchOnce(browser, platform, tracePath);
      if (tracePath) trace.summarise(tracePath);
      // The floor's trace too, to set the two side by side.
      const floorTrace = tracePath?.replace(/(\.json)?$/, '.floor.json');
      const bare = await floorOnce(browser, floor.url, floorTrace);
      if (floorTrace) trace.summarise(floorTrace);
      if (i > 0) {
        launches.push(launch);
        floors.push(bare);
      }
      // Fly's Machines API allows 1 create per second (bursts of 3).
      await new Promise((r) => setTimeout(r, 1100));
    }
    const m = (k: string) => p50(launches.map((l) => l[k]));
    row(
      '7',
      `Click to own page hydrated, through flyby-local (wrong-first), p50 of ${launches.length} launches, fresh browser context each`,
      `total ${ms(m('total'))}: click -> launch answered ${ms(m('accepted'))} (request sent at ${ms(m('click_to_sent'))}); ` +
        `API create ${ms(m('create'))}; start ${ms(m('start'))}; ready (our boot + /health poll) ${ms(m('serving'))}; ` +
        `launch server side ${ms(m('launch_total'))}; Machine serving -> hand-over form posted ${ms(m('handover'))}; ` +
        `claim (POST -> 303, 0 when it answers with the page) ${ms(m('claim'))}; page ${ms(m('page'))} (${m('replays')} replays in all); ` +
        `page -> JS + WASM loaded ${ms(m('bundle'))}, parsed ${ms(m('parsed'))}; -> hydrated ${ms(m('hydrated'))}; ` +
        `own page's first contentful paint ${ms(m('painted'))} after the click`,
      '-',
      '-',
    );
    const ours = m('ours');
    const bare = p50(floors);
    // Each launch against the floor measured right after it: the pairs' differences.
    const added = launches.map((l, i) => l.ours - floors[i]);
    row(
      '7b',
      "Our part of click to own page: total minus the platform's create and process start (p50)",
      ms(ours),
      '-',
      '-',
    );
    row(
      '7c',
      "The browser's own floor for the same hand-over, side by side: bare pages on two sites (one same-site POST, a cross-site form POST answered with the page, inline scripts), no proxy, p50",
      ms(bare),
      '-',
      '-',
    );
    row(
      '7d',
      "What our code adds to a launch: our part (7b) minus the browser's floor (7c), each launch against the floor measured after it, p50 / p95",
      `${ms(p50(added))} / ${ms(p95(added))}`,
      '≤ 50 ms / ≤ 80 ms',
      p50(added) <= 50 && p95(added) <= 80 ? 'met' : 'NOT met',
    );
  } finally {
    floor.close();
    platform.child.kill('SIGINT');
    await new Promise((r) => platform.child.on('exit', r));
  }
});

/** Every Machines API call flyby-local answered so far, of every kind. */
async function counter(api: string, name: string): Promise<number> {
  const stats = await fetch(`${api}/_local/stats`).then((r) => r.json());
  return Number(stats.counters?.[name] ?? 0);
}

/** flyby-local's Machines API calls so far, by counter (`api.<kind>`). */
async function apiCalls(api: string): Promise<Record<string, number>> {
  const stats = await fetch(`${api}/_local/stats`).then((r) => r.json());
  return Object.fromEntries(
    Object.entries(stats.counters ?? {})
      .filter(([k]) => k.startsWith('api.'))
      .map(([k, v]) => [k.slice('api.'.length), Number(v)]),
  );
}

/** The calls between two readings, a launch: "34.5 (list 20.1, get 6.0, ...)", most first. */
function callsPerLaunch(before: Record<string, number>, after: Record<string, number>, launches: number): string {
  const kinds = Object.keys(after)
    .map((k) => [k, ((after[k] ?? 0) - (before[k] ?? 0)) / launches] as [string, number])
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1]);
  const total = kinds.reduce((n, [, v]) => n + v, 0);
  return `${total.toFixed(1)} (${kinds.map(([k, n]) => `${k} ${n.toFixed(1)}`).join(', ')})`;
}

test('click to own page in the plural world: --timings fly, three launchers, three journeys', async ({ browser }) => {
  // Three journeys of eleven launches each, on a platform that takes Fly's time.
  test.setTimeout(1_200_000);
  const platform = await startLocal(['--timings', 'fly', '--launchers', '3']);
  const edge = (code: string) => `${platform.launcher}?flyby-local-edge=${code}`;
  const journeys: Array<[string, string, Press]> = [
    ['7e', 'from ams, in ams (the button)', { url: edge('ams') }],
    ['7f', 'from syd, in syd (the button)', { url: edge('syd') }],
    ['7g', 'from ams, in syd (picked on the map)', { url: edge('ams'), region: 'syd' }],
  ];
  try {
    for (const [item, what, press] of journeys) {
      const launches: Launch[] = [];
      const boots: number[] = [];
      const callsBefore = await apiCalls(platform.api);
      for (let i = 0; i <= LAUNCHES; i++) {
        const bootBefore = await counter(platform.api, 'timings.boot_ms');
        const launch = await launchOnce(browser, platform, undefined, press);
        const boot = (await counter(platform.api, 'timings.boot_ms')) - bootBefore;
        if (i > 0) {
          launches.push(launch);
          boots.push(boot);
        }
        // Fly's Machines API allows 1 create per second (bursts of 3).
        await new Promise((r) => setTimeout(r, 1100));
      }
      const calls = callsPerLaunch(callsBefore, await apiCalls(platform.api), LAUNCHES + 1);
      const k = (key: string) => launches.map((l) => l[key]);
      // The Machine's emulated boot, which no code of ours can shorten (a concierge the launch
      // creates boots beside it, not before it: one boot counted per launch).
      const platformPart = boots.map((b, i) => Math.min(b, launches[i].total));
      const ours = launches.map((l, i) => l.total - platformPart[i]);
      row(
        item,
        `Click to own page hydrated on --timings fly, ${what}, ${launches.length} launches`,
        `total p50 ${ms(p50(k('total')))}, p95 ${ms(p95(k('total')))}; the platform's emulated boot ` +
          `p50 ${ms(p50(platformPart))}; the rest (ours, with the emulated API and proxy round trips) p50 ${ms(p50(ours))}, p95 ${ms(p95(ours))}; ` +
          `${p50(k('replays'))} replays a launch (p50), each a hop's round trip; ${calls} Machines API calls a launch, every kind and all three launchers' tracker lists included`,
        '-',
        '-',
      );
    }
  } finally {
    platform.child.kill('SIGINT');
    await new Promise((r) => platform.child.on('exit', r));
  }
});

/** The pool's waiting Machines on a platform (`created`, marked `flyby_pool=warm`). */
async function waitingInPool(api: string): Promise<number> {
  const machines: Array<Record<string, unknown>> = await fetch(`${api}/_local/machines`).then((r) => r.json());
  return machines.filter((m) => m.pool === 'warm' && m.state === 'created').length;
}

test('click to own page from the warm pool vs a create: --timings fly, side by side', async ({ browser }) => {
  test.setTimeout(1_200_000);
  // One launcher each, so the refill has the whole create budget; a pool big enough for every
  // launch of the run (a take is never refilled in time for the next one a second later).
  const pooled = await startLocal(['--timings', 'fly', '--launchers', '1', '--launcher-env', `FLYBY_WARM_POOL=ams=${LAUNCHES + 2}`]);
  const plain = await startLocal(['--timings', 'fly', '--launchers', '1']);
  try {
    // The launcher knows its origin from its config (FLYBY_LAUNCHER_URL): the pool fills.
    const deadline = Date.now() + 300_000;
    while ((await waitingInPool(pooled.api)) < LAUNCHES + 1) {
      if (Date.now() > deadline) throw new Error('the warm pool never filled');
      await new Promise((r) => setTimeout(r, 500));
    }
    const runs: Record<string, { launches: Launch[]; boots: number[] }> = {
      pool: { launches: [], boots: [] },
      create: { launches: [], boots: [] },
    };
    for (let i = 0; i <= LAUNCHES; i++) {
      // Alternating, so both see the same machine at the same moments.
      for (const [name, platform] of [['pool', pooled], ['create', plain]] as const) {
        const bootBefore = await counter(platform.api, 'timings.boot_ms');
        const launch = await launchOnce(browser, platform);
        const boot = (await counter(platform.api, 'timings.boot_ms')) - bootBefore;
        if (i > 0) {
          runs[name].launches.push(launch);
          runs[name].boots.push(Math.min(boot, launch.total));
        }
        await new Promise((r) => setTimeout(r, 1100));
      }
    }
    const figures = (name: string) => {
      const { launches, boots } = runs[name];
      const totals = launches.map((l) => l.total);
      const ours = launches.map((l, i) => l.total - boots[i]);
      const k = (key: string) => p50(launches.map((l) => l[key]));
      // Where the rest goes (p50 of each phase, as row 7 splits it): the launch's server side
      // holds the boot, the start's (or create's) API trips and the Machine's first answer.
      const phases =
        `click -> launch answered ${ms(k('accepted'))}; launch server side ${ms(k('launch_total'))}; ` +
        `Machine serving -> hand-over posted ${ms(k('handover'))}; claim ${ms(k('claim'))}; page ${ms(k('page'))}; ` +
        `page -> JS + WASM loaded ${ms(k('bundle'))}, parsed ${ms(k('parsed'))}; -> hydrated ${ms(k('hydrated'))}; ` +
        `first contentful paint ${ms(k('painted'))} after the click`;
      return { p50: p50(totals), p95: p95(totals), boot: p50(boots), ours: p50(ours), ours95: p95(ours), phases };
    };
    const pool = figures('pool');
    const create = figures('create');
    for (const [item, name, f] of [['7h', 'from the warm pool (a start)', pool], ['7i', 'without a pool (a create)', create]] as const) {
      row(
        item,
        `Click to own page hydrated on --timings fly, ams in ams, one launcher, ${name}, ${LAUNCHES} launches`,
        `total p50 ${ms(f.p50)}, p95 ${ms(f.p95)}; the platform's emulated boot p50 ${ms(f.boot)}; the rest (ours, with the emulated API and proxy round trips) p50 ${ms(f.ours)}, p95 ${ms(f.ours95)} (${f.phases})`,
        item === '7h' ? 'p50 within 150 ms of the emulated start; 3x faster than 7i' : '-',
        item === '7h'
          ? `our part ${ms(pool.ours)} over the emulated start; ${(create.p50 / pool.p50).toFixed(1)}x faster than a create`
          : '-',
      );
    }
  } finally {
    for (const platform of [pooled, plain]) {
      platform.child.kill('SIGINT');
      await new Promise((r) => platform.child.on('exit', r));
    }
  }
});
