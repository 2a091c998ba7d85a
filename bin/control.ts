// The mount daemon's control endpoint: HTTP on a unix socket in $KVFS_HOME/run, answering JSON.
// `kvfs status` asks it when the daemon holds the volume (an embedded volume can be opened by one
// process only), and later tools (metrics, the lab) read from it.

import { mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { createServer, request, Server } from 'node:http';

export type Routes = Record<string, () => Promise<unknown>>;

export async function serveControl(socket: string, routes: Routes): Promise<Server> {
  mkdirSync(dirname(socket), { recursive: true });
  rmSync(socket, { force: true });
  const server = createServer((req, res) => {
    const route = routes[req.url ?? ''];
    if (!route) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no such endpoint ${req.url}` }));
      return;
    }
    route().then(
      (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body)),
      (err: Error) => res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: err.message })),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => resolve());
  });
  server.unref();
  return server;
}

/** GET a path from a daemon's control socket; rejects on connection errors or non-200 answers. */
export function askControl<T>(socket: string, path: string, timeoutMs = 30_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString() || 'null') as T & { error?: string };
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(body?.error ?? `status ${res.statusCode}`));
      });
    });
    req.on('timeout', () => req.destroy(new Error('the daemon did not answer in time')));
    req.on('error', reject);
    req.end();
  });
}
