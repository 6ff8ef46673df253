// The profile behind row 7 of BENCHMARKS.md (where a budget is not met, the profile that shows why):
// with FLYBY_BENCH_TRACE=<file>, the click bench records a Chrome trace of its last launch
// (open it in https://ui.perfetto.dev or chrome://tracing) and prints, from it, the launch's
// timeline from the click to the hydrated mark, and where the main thread of the visitor's
// Machine page spent its time.
import { readFileSync } from 'node:fs';
import type { Browser, Page } from '@playwright/test';

export const CATEGORIES = [
  'devtools.timeline',
  'disabled-by-default-devtools.timeline',
  'v8.wasm',
  'blink.user_timing',
  'loading',
  'navigation',
  'toplevel',
];

/** The mark the bench's recorder puts in the trace when a page reports itself hydrated. */
export const HYDRATED_MARK = 'flyby-hydrated';

export async function start(browser: Browser, page: Page, path: string) {
  await browser.startTracing(page, { path, categories: CATEGORIES });
}

interface Event {
  name: string;
  ph: string;
  ts: number;
  dur?: number;
  pid: number;
  tid: number;
  args?: { name?: string; data?: { url?: string; type?: string; requestId?: string } };
}

/** Instants of the launch, in ms after the click. */
const requests = new Map<string, string>();
const INSTANTS: Record<string, (e: Event) => string | undefined> = {
  ResourceSendRequest: (e) => {
    requests.set(e.args?.data?.requestId ?? '', path(e.args?.data?.url));
    return `request ${path(e.args?.data?.url)}`;
  },
  ResourceFinish: (e) => `response ${requests.get(e.args?.data?.requestId ?? '') ?? ''} finished`,
  WebSocketCreate: (e) => `WebSocket ${path(e.args?.data?.url)} created`,
  WebSocketReceiveHandshakeResponse: () => 'WebSocket handshake done',
  'NavigationRequest::BeginNavigation': () => 'navigation begins (the hand-over form)',
  'NavigationRequest::OnRequestRedirected': () => "the claim's 303",
  'NavigationRequest::OnResponseStarted': () => "the Machine's page answers",
  'RenderFrameImpl::CommitNavigation': () => 'navigation committed in the new renderer',
  MarkDOMContent: () => 'DOMContentLoaded',
  'wasm.StartStreamingCompilation': () => 'WASM streaming compile started',
  'wasm.FinishStreaming': () => 'WASM compiled',
  [HYDRATED_MARK]: () => 'hydrated',
};

/** Main-thread work on the Machine's page, inclusive (nested events count in both). */
const WORK: Record<string, string> = {
  'RenderFrameImpl::CommitNavigation': 'commit of the cross-site navigation (new renderer)',
  ParseHTML: 'HTML parsing (with the scripts it runs)',
  UpdateLayoutTree: 'style',
  Layout: 'layout',
  'v8.wasm.compileConsume': 'WASM streaming compile',
  'wasm.CompileLazy': 'WASM lazy function compiles',
  EvaluateScript: 'script evaluation',
  'v8.evaluateModule': 'module evaluation',
  RunMicrotasks: 'microtasks (the bundle init and the islands)',
  FunctionCall: 'JS/WASM calls from tasks',
  Paint: 'paint',
};

function path(url?: string) {
  if (!url) return '';
  const u = new URL(url);
  return `${u.hostname.split('.')[0]}${u.pathname.replace(/\.[A-Za-z0-9_-]{22}\./, '.')}`;
}

export function summarise(file: string) {
  const raw = JSON.parse(readFileSync(file, 'utf8'));
  const events: Event[] = Array.isArray(raw) ? raw : raw.traceEvents;
  const threads = new Map<string, string>();
  for (const e of events)
    if (e.ph === 'M' && e.name === 'thread_name') threads.set(`${e.pid}/${e.tid}`, e.args?.name ?? '');
  const click = events.find((e) => e.name === 'EventDispatch' && e.args?.data?.type === 'click');
  const hydrated = events.filter((e) => e.name === HYDRATED_MARK).pop();
  if (!click || !hydrated) {
    console.log(`trace ${file}: no click or no hydrated mark in it`);
    return;
  }
  const ms = (ts: number) => ((ts - click.ts) / 1000).toFixed(1).padStart(7);
  console.log(`trace ${file}: from the click to the hydrated mark, ms`);
  const thread = (e: Event) => threads.get(`${e.pid}/${e.tid}`);
  const main = (e: Event) => thread(e) === 'CrRendererMain';
  const seen = new Set<string>();
  for (const e of events) {
    if (e.ts < click.ts || e.ts > hydrated.ts || !(e.name in INSTANTS)) continue;
    if (!main(e) && thread(e) !== 'CrBrowserMain') continue;
    // The browser's navigation events come in nested pairs: the first says it.
    if (e.name.startsWith('NavigationRequest::') && seen.has(e.name)) continue;
    seen.add(e.name);
    const what = INSTANTS[e.name](e);
    if (what) console.log(`${ms(e.ts)}  ${what}`);
  }
  const work = new Map<string, number>();
  for (const e of events) {
    if (e.pid !== hydrated.pid || !main(e) || e.ts < click.ts || e.ts > hydrated.ts) continue;
    const label = WORK[e.name];
    if (label && e.dur) work.set(label, (work.get(label) ?? 0) + e.dur / 1000);
  }
  console.log("the Machine's page, main thread, inclusive ms:");
  for (const [label, total] of [...work].sort((a, b) => b[1] - a[1]))
    console.log(`${total.toFixed(1).padStart(7)}  ${label}`);
  // The main thread's tasks in order: what each long one was busy with (its largest parts).
  const onPage = events.filter(
    (e) => e.pid === hydrated.pid && main(e) && e.ph === 'X' && e.dur && e.ts >= click.ts && e.ts <= hydrated.ts,
  );
  const tasks = onPage.filter((e) => e.name === 'ThreadControllerImpl::RunTask' && e.dur! >= 3000);
  console.log("the Machine's page, main-thread tasks of 3 ms or more: start (ms after the click), length, largest parts");
  for (const task of tasks) {
    const parts = onPage
      .filter((e) => e.name in WORK && e.ts >= task.ts && e.ts + e.dur! <= task.ts + task.dur!)
      .sort((a, b) => b.dur! - a.dur!)
      .slice(0, 3)
      .map((e) => `${WORK[e.name]} ${(e.dur! / 1000).toFixed(1)}`);
    const dispatch = onPage
      .filter((e) => e.name === 'EventDispatch' && e.ts >= task.ts && e.ts + e.dur! <= task.ts + task.dur!)
      .sort((a, b) => b.dur! - a.dur!)[0];
    const handlers = dispatch && dispatch.dur! >= 1000
      ? [`${dispatch.args?.data?.type ?? 'event'} handlers ${(dispatch.dur! / 1000).toFixed(1)}`]
      : [];
    const what = [...handlers, ...parts];
    console.log(`${ms(task.ts)} ${(task.dur! / 1000).toFixed(1).padStart(6)}  ${what.join(', ')}`);
  }
}
