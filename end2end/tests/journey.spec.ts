import { test, expect } from '../support/fixtures';
import {
  arriveOnMachine,
  backToLauncher,
  expectAccessible,
  expectCountdown,
  expectProgressInOrder,
  expectRttUpdates,
  expectShowEnds,
  launchButton,
  openLauncher,
  recordProgress,
} from '../support/journey';

test('the whole journey: button, progress, own Machine, RTT, the show, no more, back', async ({
  page,
  platform,
  api,
}, testInfo) => {
  const progress = await recordProgress(page);
  await openLauncher(page, platform);
  await expectAccessible(page, 'the launcher');
  const reroutedBefore = await api.rerouted();

  await launchButton(page).click();
  const id = await arriveOnMachine(page);
  expectProgressInOrder(progress);

  // Their own Machine, and only that one, serves them.
  expect((await api.alive()).map((m) => m.id)).toEqual([id]);
  await expectRttUpdates(page);
  await expectCountdown(page);
  await expectAccessible(page, 'the Machine page');
  if (testInfo.project.name === 'wrong-first') {
    // The launch (pinned to its launcher) and the Machine's page, bundle, server function and
    // live channel each reached a wrong Machine first and were replayed (or, once a replay had
    // taught it, sent straight on by the proxy's replay cache).
    expect(await api.rerouted(), 'requests rerouted by fly-replay').toBeGreaterThanOrEqual(reroutedBefore + 6);
  }

  // The show runs its course by itself: the hand comes out, the switch goes off.
  await expectShowEnds(page, api, id);
  await expectAccessible(page, 'the Machine page after the end');
  expect(await api.alive(), 'no visitor Machine left').toEqual([]);

  await backToLauncher(page, platform);
});
