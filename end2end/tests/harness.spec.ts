import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test, expect, CLIENT_IP_HEADER } from '../support/fixtures';

// The suite plays several visitors from one host by giving each browser context its own
// `flyby-local-client-ip` header (extraHTTPHeaders). This proves Chromium really sends it on
// every kind of request a journey makes: the page, a fetch, a WebSocket upgrade, a cross-site
// subresource and a cross-site form POST (the hand-over).
test('each visitor’s address header goes with every kind of request', async ({ page, visitorIp }) => {
  const seen: Record<string, string | undefined> = {};
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    seen[url.pathname] = req.headers[CLIENT_IP_HEADER] as string | undefined;
    if (url.pathname === '/page') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<!DOCTYPE html><html lang="en"><title>probe</title><body>
        <img alt="" src="http://other.localhost:${port()}/image">
        <form method="post" action="http://other.localhost:${port()}/form"><input name="a" value="b"></form>
        <script>
          // The body is read before the form navigates away, else Chromium aborts the fetch.
          fetch('/fetch').then((r) => r.text()).then(() => {
            const ws = new WebSocket('ws://' + location.host + '/socket');
            ws.onmessage = () => { ws.close(); document.forms[0].submit(); };
          });
        </script></body></html>`);
    } else if (url.pathname === '/form') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!DOCTYPE html><html lang="en"><title>done</title><h1>done</h1></html>');
    } else if (url.pathname === '/image') {
      res.writeHead(200, { 'content-type': 'image/gif' });
      res.end(Buffer.from('R0lGODlhAQABAAAAACw=', 'base64'));
    } else {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    }
  });
  server.on('upgrade', (req, socket) => {
    seen['/socket'] = req.headers[CLIENT_IP_HEADER] as string | undefined;
    const accept = crypto
      .createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69])); // a text frame: "hi"
    socket.on('data', () => socket.end());
    socket.on('error', () => {});
  });
  const port = () => (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await page.goto(`http://probe.localhost:${port()}/page`);
    await expect(page.getByRole('heading', { name: 'done' })).toBeVisible();
    expect(Object.keys(seen)).toEqual(expect.arrayContaining(['/page', '/image', '/fetch', '/socket', '/form']));
    // The browser's own requests (the favicon) carry it too.
    for (const [path, ip] of Object.entries(seen)) expect(ip, path).toBe(visitorIp);
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});
