import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');

/** A running local Fly platform and where to reach it. */
export interface LocalPlatform {
  /** The proxy, e.g. http://127.0.0.1:41234 */
  proxy: string;
  /** The Machines API and its admin endpoint. */
  api: string;
  /** The launcher's public URL through the proxy: http://flyby.localhost:<port> */
  launcher: string;
  stop: () => Promise<void>;
}

/**
 * Starts the release `flyby-local` on free ports and resolves once it prints its ready line,
 * so nothing is guessed and nothing is polled.
 */
export function startLocal(args: string[] = []): Promise<LocalPlatform> {
  const bin = process.env.FLYBY_LOCAL_BIN ?? path.join(repo, 'target', 'release', 'flyby-local');
  const site = process.env.FLYBY_SITE_ROOT ? ['--site-root', process.env.FLYBY_SITE_ROOT] : [];
  const child = spawn(bin, ['--proxy-addr', '127.0.0.1:0', '--api-addr', '127.0.0.1:0', ...site, ...args], {
    cwd: repo,
    env: { PATH: process.env.PATH ?? '', RUST_LOG: process.env.RUST_LOG ?? 'info' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    let ready = false;
    lines.on('line', (line) => {
      if (process.env.FLYBY_LOCAL_QUIET !== '1') process.stdout.write(`[flyby-local] ${line}\n`);
      const match = /^flyby-local ready: proxy=(\S+) api=(\S+)/.exec(line);
      if (!ready && match) {
        ready = true;
        const port = new URL(match[1]).port;
        resolve({
          proxy: match[1],
          api: match[2],
          launcher: `http://flyby.localhost:${port}`,
          stop: () => stop(child),
        });
      }
    });
    child.on('exit', (code) => {
      if (!ready) reject(new Error(`flyby-local exited with ${code} before it was ready`));
    });
  });
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.on('exit', () => resolve());
    child.kill('SIGINT');
  });
}
