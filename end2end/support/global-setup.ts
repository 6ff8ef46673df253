import fs from 'node:fs';
import type { FullConfig } from '@playwright/test';
import { summaryFile } from './flyby-local';

/**
 * The workers start and stop the local Fly platforms (`fixtures.ts`); each one, as it stops,
 * adds a line of what it counted to the summary file. The returned teardown prints those
 * lines once the run is over — for `wrong-first`, the proof that the run went through
 * fly-replay.
 */
export default async function globalSetup(config: FullConfig) {
  // Every project writes to the one output folder of the config.
  const file = summaryFile(config.projects[0].outputDir);
  fs.rmSync(file, { force: true });
  return async () => {
    if (fs.existsSync(file)) process.stdout.write(fs.readFileSync(file, 'utf8'));
  };
}
