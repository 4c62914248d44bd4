// A real OTLP/HTTP receiver for tests: it answers every export with 200 and
// keeps the bodies by path (/v1/traces, /v1/metrics), parsed when JSON, raw
// otherwise; and a way to set the OTEL_* variables a test's child processes
// inherit.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ExecutionContext } from 'ava';

export interface OtlpRequest {
  readonly path: string;
  readonly contentType: string;
  readonly raw: Buffer;
  /** The parsed body of a JSON export. */
  readonly json?: unknown;
}

export interface OtlpReceiver {
  readonly url: string;
  readonly requests: OtlpRequest[];
  close(): Promise<void>;
}

export async function otlpReceiver(): Promise<OtlpReceiver> {
  const requests: OtlpRequest[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const contentType = req.headers['content-type'] ?? '';
      const json = contentType === 'application/json' ? JSON.parse(raw.toString()) : undefined;
      requests.push({ path: `${req.method} ${req.url}`, contentType, raw, json });
      res.writeHead(200, { 'content-type': contentType || 'application/json' }).end(json ? '{}' : undefined);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** Sets environment variables for one test (its child processes inherit them) and restores them after. */
export function withEnv(t: ExecutionContext, vars: Record<string, string>): void {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  t.teardown(() => {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
}
