import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');

/** Where a running local Fly platform can be reached; what tests find in `process.env`. */
export interface PlatformInfo {
  /** The Playwright project (and platform) name, e.g. `wrong-first`. */
  name: string;
  /** The proxy, e.g. http://127.0.0.1:41234 */
  proxy: string;
  /** The Machines API and its admin endpoint under /_local/, e.g. http://127.0.0.1:41235 */
  api: string;
  /** The launcher's public origin through the proxy: http://flyby.localhost:<port> */
  launcher: string;
  /** The ephemeral app's public origin through the proxy: http://flyby-machines.localhost:<port> */
  machines: string;
  /** The file every line the platform (and its Machines) printed goes to. */
  log: string;
}

/** A running local Fly platform. */
export interface LocalPlatform extends PlatformInfo {
  stop: () => Promise<void>;
}

/** The file each platform adds its line of counters to as it stops (see `stopWithSummary`). */
export function summaryFile(outputDir: string): string {
  return path.join(outputDir, 'flyby-local-summary.txt');
}

/** Adds the platform's line of counters to the summary file, then stops it. */
export async function stopWithSummary(platform: LocalPlatform, outputDir: string): Promise<void> {
  const line = await summary(platform);
  fs.mkdirSync(outputDir, { recursive: true });
  fs.appendFileSync(summaryFile(outputDir), `${line}\n`);
  await platform.stop();
}

/** One line of counters, or why they could not be read. */
async function summary(platform: LocalPlatform): Promise<string> {
  const name = `flyby-local (${platform.name}, ${path.basename(platform.log)})`;
  try {
    const response = await fetch(`${platform.api}/_local/stats`, { signal: AbortSignal.timeout(5_000) });
    const c: Record<string, number> = (await response.json()).counters ?? {};
    const launched = Object.entries(c)
      .filter(([k]) => /^api\.create\.2\d\d$/.test(k))
      .reduce((n, [, v]) => n + v, 0);
    const rerouted = (c['proxy.replays.delivered'] ?? 0) + (c['proxy.replay_cache.hits'] ?? 0);
    const warning =
      platform.name === 'wrong-first' && launched > 0 && rerouted === 0
        ? '\nWARNING: the wrong-first platform launched Machines but replayed nothing: fly-replay was not exercised'
        : '';
    return (
      `${name}: ${c['proxy.requests'] ?? 0} requests, ` +
      `proxy.replays.delivered=${c['proxy.replays.delivered'] ?? 0}, ` +
      `proxy.replay_cache.hits=${c['proxy.replay_cache.hits'] ?? 0}, ` +
      `${c['proxy.websockets'] ?? 0} WebSockets, ${launched} Machines created in flyby-machines${warning}`
    );
  } catch (e) {
    return `${name}: counters unavailable: ${(e as Error).message}`;
  }
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;
const READY = /^flyby-local ready: proxy=(\S+) api=(\S+)/;

/**
 * Starts the release `flyby-local` on free ports and resolves once it prints its ready line,
 * so nothing is guessed and nothing is polled. Everything it prints (its own log on stderr,
 * its Machines' lines on stdout) goes to `logFile`, and to the terminal too when
 * `FLYBY_LOCAL_ECHO=1`.
 */
export function startLocal(name: string, args: string[], logFile: string): Promise<LocalPlatform> {
  const bin = process.env.FLYBY_LOCAL_BIN ?? path.join(repo, 'target', 'release', 'flyby-local');
  const site = process.env.FLYBY_SITE_ROOT ? ['--site-root', process.env.FLYBY_SITE_ROOT] : [];
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const log = fs.createWriteStream(logFile);
  const echo = process.env.FLYBY_LOCAL_ECHO === '1';
  const recent: string[] = [];
  const child = spawn(bin, ['--proxy-addr', '127.0.0.1:0', '--api-addr', '127.0.0.1:0', ...site, ...args], {
    cwd: repo,
    env: { PATH: process.env.PATH ?? '', RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const record = (line: string) => {
    const clean = line.replace(ANSI, '');
    if (!log.writableEnded) log.write(`${clean}\n`);
    recent.push(clean);
    if (recent.length > 40) recent.shift();
    if (echo) process.stdout.write(`[${name}] ${clean}\n`);
  };
  createInterface({ input: child.stderr! }).on('line', record);
  // The log ends with the last line of either stream, not at the exit (lines may still be
  // on their way then).
  child.on('close', () => log.end());
  return new Promise((resolve, reject) => {
    let ready = false;
    const fail = (why: string) => {
      if (ready) return;
      ready = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`flyby-local (${name}) ${why}; its last lines:\n${recent.join('\n')}`));
    };
    const timer = setTimeout(() => fail('printed no ready line within 60 s'), 60_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      record(line);
      const match = READY.exec(line);
      if (!ready && match) {
        ready = true;
        clearTimeout(timer);
        const port = new URL(match[1]).port;
        resolve({
          name,
          proxy: match[1],
          api: match[2],
          launcher: `http://flyby.localhost:${port}`,
          machines: `http://flyby-machines.localhost:${port}`,
          log: logFile,
          stop: () => stop(child),
        });
      }
    });
    child.on('error', (e) => fail(`could not start (${bin}): ${e.message}`));
    child.on('exit', (code, signal) => fail(`exited (${signal ?? code}) before it was ready`));
  });
}

/**
 * SIGINT (flyby-local stops every Machine first), SIGKILL if it takes more than 20 s; resolves
 * once its output is read to the end (or 2 s after the exit, should a stray process still
 * hold the pipe).
 */
function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('exit', () => {
      clearTimeout(kill);
      const late = setTimeout(resolve, 2_000);
      child.on('close', () => {
        clearTimeout(late);
        resolve();
      });
    });
    child.kill('SIGINT');
  });
}
