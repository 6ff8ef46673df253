import { startFlyby } from './flyby-process';

// Starts one server of each role for the whole run; tests find them in process.env.
export default async function globalSetup() {
  const launcher = await startFlyby({ FLYBY_ROLE: 'launcher' });
  const ephemeral = await startFlyby({ FLYBY_ROLE: 'ephemeral', FLY_MACHINE_ID: '0123456789abcd' });
  process.env.LAUNCHER_URL = launcher.url;
  process.env.EPHEMERAL_URL = ephemeral.url;
  return async () => {
    await Promise.all([launcher.stop(), ephemeral.stop()]);
  };
}
