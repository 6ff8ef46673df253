// Short lives keep the scenarios short: a show of 20 s leaves every scenario time to look
// around before the Machine switches itself off, and a Machine a failed test leaves behind
// is gone within a minute at most.
const short = [
  '--launcher-env', 'FLYBY_SHOW_SECS=20',
  '--launcher-env', 'FLYBY_CLAIM_SECS=20',
  '--launcher-env', 'FLYBY_TTL_SECS=60',
];

/**
 * The arguments of each Playwright project's local Fly platform. Every worker starts its own
 * platform for the project it runs (`fixtures.ts`), so two workers never share one: a fault
 * one scenario arms, or a region another fills, is seen by that scenario alone, as in a run
 * with one worker.
 */
export const PLATFORMS: Record<string, string[]> = {
  // fly-proxy's own rule: the Machine nearest the visitor's edge region.
  nearest: ['--balance', 'nearest', ...short],
  // Every request reaches a wrong Machine first whenever there is one, so every request of
  // a journey goes through the affinity layer's fly-replay.
  'wrong-first': ['--balance', 'wrong-first', ...short],
  // Room for one visitor's Machine only. One launcher, so that the map a visitor watches is
  // the very view the launch checks its capacity against.
  capacity: ['--balance', 'wrong-first', '--launchers', '1', '--launcher-env', 'FLYBY_MAX_MACHINES=1', ...short],
  // The plural world: distance between regions and Fly's boot times, three launchers (ams,
  // ord, sin), every request reaching a wrong Machine first; visitors come from anywhere.
  world: ['--timings', 'fly', '--balance', 'wrong-first', '--launchers', '3', ...short],
  // A warm pool of one Machine in Amsterdam, on Fly's timings, behind two launchers.
  pool: [
    '--timings', 'fly', '--balance', 'wrong-first', '--launchers', '2',
    '--launcher-env', 'FLYBY_WARM_POOL=ams=1', ...short,
  ],
};
