// A probe behind BENCHMARKS.md's row-7 notes, not part of `make bench`: what the first layout
// of the visitor's Machine page costs in a new renderer, and what the fonts it uses add to it
// (on Linux each font the layout needs, by family, weight and size, is a synchronous call to
// the browser process, which is busy with the navigation at that moment). The page's body as a
// Machine serves it (the release `flyby` in the ephemeral role, owned by the test support's
// owner), in four variants: as served; with the Machine id in a monospace of its own size and
// the vitals larger, as the page was before it kept to three fonts; no stylesheet; a tiny page.
// No script but one that forces a layout and times it. Each load in a fresh browser context (a
// new renderer), the variants alternating, 21 rounds (the first dropped). From end2end/, after
// `make build`:
//   npx playwright test --config ../benches/click/playwright.config.ts first-layout
import { test } from '@playwright/test';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import path from 'node:path';

const repo = path.resolve(__dirname, '..', '..');
// tests/system/support/mod.rs: MACHINE_ID, OWNER_SECRET and OWNER_HASH.
const MACHINE = '0123456789abcd';
const SECRET = '1'.repeat(64);
const HASH = '3138bb9bc78df27c473ecfd1410f7bd45ebac1f59cf3ff9cfe4db77aab7aedd3';

async function machinePage(): Promise<{ body: string; css: string }> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn(path.join(repo, 'target', 'release', 'flyby'), [], {
    env: {
      FLYBY_ROLE: 'ephemeral',
      FLY_MACHINE_ID: MACHINE,
      FLY_REGION: 'ams',
      FLYBY_OWNER_HASH: HASH,
      FLYBY_LAUNCHER_URL: 'http://flyby.localhost:3000',
      LEPTOS_SITE_ROOT: path.join(repo, 'target', 'site'),
      LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
      LEPTOS_OUTPUT_NAME: 'flyby',
    },
    stdio: 'ignore',
  });
  const get = (p: string) =>
    fetch(`http://127.0.0.1:${port}${p}`, { headers: { cookie: `flyby_owner=${MACHINE}.${SECRET}` } });
  try {
    await test.expect.poll(() => get('/health').then((r) => r.status, () => 0)).toBe(200);
    const html = await (await get(`/m/${MACHINE}`)).text();
    const css = /<style[^>]*>([\s\S]*?)<\/style>/.exec(html)![1];
    const body = html.slice(html.indexOf('<body'), html.indexOf('</body>'));
    return { body: body.replace(/<script[\s\S]*?<\/script>/g, ''), css };
  } finally {
    server.kill();
  }
}

test('first layout of the Machine page in a new renderer', async ({ browser }) => {
  const { body, css } = await machinePage();
  const tiny = '<body><p>A Fly Machine of your own</p>';
  const variants: [string, string, string][] = [
    ['as served', css, body],
    ['seven fonts (before)', css + '.machine-id{font-family:monospace;font-size:.8em}.vitals{font-size:1.1rem}', body],
    ['no stylesheet', '', body],
    ['tiny page', '', tiny],
  ];
  const site = createServer((req, res) => {
    const [, style, page] = variants[Number((req.headers.host ?? '').split('.')[0].slice(1))];
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(
      `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><style>${style}</style></head>${page}` +
        '<script>{const t=performance.now();document.body.offsetHeight;window.__layout=performance.now()-t;}</script></body></html>',
    );
  });
  await new Promise<void>((r) => site.listen(0, '127.0.0.1', r));
  const { port } = site.address() as { port: number };
  const times: number[][] = variants.map(() => []);
  for (let round = 0; round < 21; round++) {
    for (const i of variants.keys()) {
      const context = await browser.newContext();
      const tab = await context.newPage();
      await tab.goto(`http://v${i}.localhost:${port}/`);
      const ms = await tab.evaluate(() => (window as any).__layout as number);
      if (round > 0) times[i].push(ms);
      await context.close();
    }
  }
  site.close();
  console.log('first layout of the Machine page in a new renderer, ms (20 loads each)');
  for (const [i, [name]] of variants.entries()) {
    const s = times[i].sort((a, b) => a - b);
    console.log(
      `${name.padEnd(22)} p50 ${s[s.length >> 1].toFixed(1)}  min ${s[0].toFixed(1)}  max ${s[s.length - 1].toFixed(1)}`,
    );
  }
});
