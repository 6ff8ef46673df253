import { startLocal } from './flyby-local';

// One local Fly platform for the whole run, with the proxy sending every request to the wrong
// Machine first, so that every journey really goes through fly-replay. Tests find it in
// process.env.
export default async function globalSetup() {
  const platform = await startLocal(['--balance', 'wrong-first']);
  process.env.LAUNCHER_URL = platform.launcher;
  process.env.LOCAL_API = platform.api;
  return async () => {
    const stats = await fetch(`${platform.api}/_local/stats`).then((r) => r.json());
    const c = stats.counters ?? {};
    console.log(
      `flyby-local (wrong-first): ${c['proxy.requests'] ?? 0} requests, ` +
        `${c['proxy.replays.delivered'] ?? 0} replays delivered, ` +
        `${c['proxy.replay_cache.hits'] ?? 0} replay-cache hits`,
    );
    await platform.stop();
  };
}
