import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');

/** A running `flyby` process and the URL it serves on. */
export interface FlybyProcess {
  url: string;
  stop: () => Promise<void>;
}

/**
 * Starts the release `flyby` binary on a free port and resolves once it logs the address it
 * really listens on (its JSON "serving" line), so no port is guessed and nothing is polled.
 */
export function startFlyby(env: Record<string, string>): Promise<FlybyProcess> {
  const bin = process.env.FLYBY_BIN ?? path.join(repo, 'target', 'release', 'flyby');
  const child = spawn(bin, [], {
    cwd: repo,
    env: {
      PATH: process.env.PATH ?? '',
      LEPTOS_SITE_ADDR: '127.0.0.1:0',
      LEPTOS_SITE_ROOT: path.join(repo, 'target', 'site'),
      FLYBY_LOG_FORMAT: 'json',
      ...env,
    },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr! });
    let done = false;
    lines.on('line', (line) => {
      process.stderr.write(`[flyby ${env.FLYBY_ROLE}] ${line}\n`);
      if (done) return;
      let event: { message?: string; addr?: string };
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      if (event.message === 'serving' && event.addr) {
        done = true;
        resolve({ url: `http://${event.addr}`, stop: () => stop(child) });
      }
    });
    child.on('exit', (code) => {
      if (!done) reject(new Error(`flyby (${env.FLYBY_ROLE}) exited with ${code} before serving`));
    });
  });
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.on('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
