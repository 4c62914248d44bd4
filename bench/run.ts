// `npm run bench -- <name> [--flags]`: runs one benchmark, prints readable
// lines, then its result as the final JSON line.
import { tuneAllocator } from '../native/index.ts';
import { benchAudit } from './audit.ts';
import { benchBridge } from './bridge.ts';
import { benchCompression } from './compression.ts';
import { benchEngine } from './engine.ts';
import { benchNatsCluster } from './nats-cluster.ts';
import { benchOrion } from './orion.ts';
import { benchSchedule } from './schedule.ts';
import { benchSplit } from './split.ts';
import { benchTracing } from './tracing.ts';
import { benchTransport } from './transport.ts';

const benches: Record<string, (args: string[]) => Promise<Record<string, unknown>>> = { audit: benchAudit, bridge: benchBridge, compression: benchCompression, engine: benchEngine, 'nats-cluster': benchNatsCluster, orion: benchOrion, schedule: benchSchedule, split: benchSplit, tracing: benchTracing, transport: benchTransport };

const [name, ...args] = process.argv.slice(2);
if (!name || name === '--help' || !benches[name]) {
  const out = `usage: npm run bench -- <${Object.keys(benches).join('|')}> [--reps=N] [--mib=N (transport)] [--steps=N --eval-every=N --val-batches=N --only=VARIANTS --seed=N (compression)] [--stages=N --sync-every=N --outer-steps=N --max-replicas=N (bridge)] [--steps=N --time-scale=X --only=1f1b,zb-h1,zb-h2 --stages=N --microbatches=N (schedule)] [--steps=N --reps=N --cheaters=N (audit)] [--starts=N --parallel=N --load=N --also=NATS_SERVER (nats-cluster)] [--steps=N --time-scale=X --frame-bytes=N --split-steps=N --split-time-scale=X (orion)]\n`;
  if (name && name !== '--help') {
    process.stderr.write(`bench: unknown benchmark '${name}'\n${out}`);
    process.exit(2);
  }
  process.stdout.write(out);
  process.exit(0);
}
tuneAllocator();  // as every caravan process does
const result = await benches[name](args);
console.log(JSON.stringify(result));
