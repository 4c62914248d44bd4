// `npm run bench -- tracing`: what tracing costs a run. The tiny preset over
// NATS (embedded server, 4 host processes), run with tracing off, with every
// microbatch traced, and with 1% sampled, each exporting OTLP/HTTP to a local
// receiver that reads and drops the payloads; alternated, medians of tokens/s.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { loadRunConfig } from '../runtime/config/load-run-config.ts';
import { createLogger } from '../runtime/log.ts';
import { trainDistributed } from '../runtime/train/train-distributed.ts';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const arg = (args: string[], name: string, fallback: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback);

export async function benchTracing(args: string[]): Promise<Record<string, unknown>> {
  const reps = arg(args, 'reps', 3);
  const steps = arg(args, 'steps', 20);
  let exports = 0, bytes = 0;
  const server = createServer((req, res) => {
    req.on('data', (c: Buffer) => { bytes += c.length; });
    req.on('end', () => { exports++; res.writeHead(200).end(); });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps, stages: 4 } } });
  const modes: Record<string, Record<string, string | undefined>> = {
    off: { OTEL_EXPORTER_OTLP_ENDPOINT: undefined, OTEL_TRACES_SAMPLER_ARG: undefined },
    all: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER_ARG: '1' },
    one_pct: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_TRACES_SAMPLER_ARG: '0.01' },
  };
  const tokS: Record<string, number[]> = { off: [], all: [], one_pct: [] };
  console.log(`tracing bench: tiny preset, 4 stages over NATS, ${steps} steps, ${reps} alternated reps`);
  for (let r = 0; r < reps; r++) {
    for (const [mode, env] of Object.entries(modes)) {
      for (const [k, v] of Object.entries(env)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      const summary = await trainDistributed({ config, log: createLogger('bench', 'silent') });
      tokS[mode].push(summary.tokens_per_s);
      console.log(`rep ${r} ${mode}: ${Math.round(summary.tokens_per_s)} tok/s`);
    }
  }
  server.close();
  const off = median(tokS.off), all = median(tokS.all), onePct = median(tokS.one_pct);
  console.log(`exports received: ${exports} (${(bytes / 1e6).toFixed(1)} MB)`);
  return {
    bench: 'tracing',
    tok_s_off: Math.round(off),
    tok_s_all: Math.round(all),
    tok_s_1pct: Math.round(onePct),
    cost_all_pct: +((100 * (off - all)) / off).toFixed(1),
    cost_1pct_pct: +((100 * (off - onePct)) / off).toFixed(1),
    spread_off_pct: +((100 * (Math.max(...tokS.off) - Math.min(...tokS.off))) / off).toFixed(1),
    reps,
    steps,
  };
}
