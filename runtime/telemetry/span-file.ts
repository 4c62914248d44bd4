// Spans to a file without a collector: a local OTLP/HTTP (JSON) receiver
// that `caravan train --trace-file` points its hosts at, writing each span as
// one JSON line; and the reader `caravan timeline` uses.
import { createWriteStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SpanRecord {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly start: number;  // epoch ms
  readonly end: number;
  readonly attributes: Record<string, string | number>;
  readonly resource: Record<string, string | number>;
}

type OtlpAttribute = { key: string; value: { stringValue?: string; intValue?: string | number; doubleValue?: number; boolValue?: boolean } };
interface OtlpTraces {
  resourceSpans?: Array<{
    resource?: { attributes?: OtlpAttribute[] };
    scopeSpans?: Array<{ spans?: Array<{ traceId: string; spanId: string; parentSpanId?: string; name: string; startTimeUnixNano: string | number; endTimeUnixNano: string | number; attributes?: OtlpAttribute[] }> }>;
  }>;
}

function attributes(list: OtlpAttribute[] = []): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const { key, value } of list) out[key] = value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : value.doubleValue ?? String(value.boolValue));
  return out;
}

/** The spans of one OTLP/JSON export request. */
export function spansOfOtlpJson(body: OtlpTraces): SpanRecord[] {
  const out: SpanRecord[] = [];
  for (const rs of body.resourceSpans ?? []) {
    const resource = attributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || undefined, name: s.name,
          start: Number(BigInt(s.startTimeUnixNano) / 1000n) / 1000, end: Number(BigInt(s.endTimeUnixNano) / 1000n) / 1000,
          attributes: attributes(s.attributes), resource,
        });
      }
    }
  }
  return out;
}

export interface SpanFileReceiver {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT (with OTEL_EXPORTER_OTLP_PROTOCOL=http/json). */
  readonly endpoint: string;
  spans(): number;
  close(): Promise<void>;
}

export async function startSpanFileReceiver(file: string): Promise<SpanFileReceiver> {
  const out = createWriteStream(file, { flags: 'w' });
  let count = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url !== '/v1/traces' || !String(req.headers['content-type']).startsWith('application/json')) {
        res.writeHead(415).end('caravan --trace-file takes OTLP/HTTP JSON traces');
        return;
      }
      try {
        for (const span of spansOfOtlpJson(JSON.parse(Buffer.concat(chunks).toString('utf8')))) {
          out.write(`${JSON.stringify(span)}\n`);
          count++;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch (err) {
        res.writeHead(400).end(String(err));
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    spans: () => count,
    close: async () => {
      await new Promise((r) => server.close(r));
      await new Promise((r) => out.end(r));
    },
  };
}

/** The spans of a trace file; `growing`: a run is still writing it, so a last line without its newline is not read yet. */
export async function readSpanFile(file: string, o: { growing?: boolean } = {}): Promise<SpanRecord[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read trace file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (o.growing) text = text.slice(0, text.lastIndexOf('\n') + 1);
  return text.split('\n').filter((l) => l.trim()).map((line, i) => {
    try {
      const s = JSON.parse(line) as SpanRecord;
      if (typeof s.name !== 'string' || typeof s.start !== 'number' || typeof s.end !== 'number' || typeof s.attributes !== 'object') throw new Error('not a span record');
      return s;
    } catch (err) {
      throw new Error(`${file} line ${i + 1}: ${(err as Error).message}`);
    }
  });
}
