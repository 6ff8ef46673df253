import path from 'node:path';
import type { FullConfig } from '@playwright/test';
import { startLocal, type LocalPlatform } from './flyby-local';
import { PLATFORMS, PLATFORMS_ENV } from './platforms';

/**
 * Starts one local Fly platform per project (see `platforms.ts`), in parallel, and hands them
 * to the workers through the environment. The returned teardown prints what each platform
 * counted — for `wrong-first`, the proof that the run went through fly-replay — then stops
 * them all.
 */
export default async function globalSetup(config: FullConfig) {
  const logs = path.resolve(config.projects[0]?.outputDir ?? path.join(__dirname, '..', 'test-results'));
  const started = await Promise.allSettled(
    Object.entries(PLATFORMS).map(([name, args]) =>
      startLocal(name, args, path.join(logs, `flyby-local-${name}.log`)),
    ),
  );
  const platforms = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = started.flatMap((s) => (s.status === 'rejected' ? [s.reason] : []));
  if (failed.length > 0) {
    await Promise.all(platforms.map((p) => p.stop()));
    throw failed[0];
  }
  process.env[PLATFORMS_ENV] = JSON.stringify(
    Object.fromEntries(platforms.map(({ stop: _stop, ...info }) => [info.name, info])),
  );
  return async () => {
    for (const platform of platforms) console.log(await summary(platform));
    await Promise.all(platforms.map((p) => p.stop()));
  };
}

/** One line of counters, or why they could not be read. */
async function summary(platform: LocalPlatform): Promise<string> {
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
      `flyby-local (${platform.name}): ${c['proxy.requests'] ?? 0} requests, ` +
      `proxy.replays.delivered=${c['proxy.replays.delivered'] ?? 0}, ` +
      `proxy.replay_cache.hits=${c['proxy.replay_cache.hits'] ?? 0}, ` +
      `${c['proxy.websockets'] ?? 0} WebSockets, ${launched} Machines created in flyby-machines ` +
      `(log: ${path.relative(process.cwd(), platform.log)})${warning}`
    );
  } catch (e) {
    return `flyby-local (${platform.name}): counters unavailable: ${(e as Error).message}`;
  }
}
