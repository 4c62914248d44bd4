// The command line as a user meets it: help, a clear line on bad flags, JSON output.
import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { cudaDevice } from '../../native/index.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';

const run = promisify(execFile);
const caravan = (...args: string[]) => run(process.execPath, ['--import=tsx', 'runtime/cli/bin.ts', ...args]);

test('caravan --help and caravan train --help describe the commands', async (t) => {
  t.regex((await caravan('--help')).stdout, /train/);
  const help = (await caravan('train', '--help')).stdout;
  for (const flag of ['--steps', '--stages', '--microbatches', '--checkpoint-dir', '--json', '--data', '--bottleneck ', '--bottleneck-quant', '--no-bottleneck-embed', '--no-lz4']) t.regex(help, new RegExp(flag));
});

test('every command has --help naming its flags', async (t) => {
  const expected: Record<string, string[]> = {
    coordinator: ['--nats', '--run', '--config', '--heartbeat-timeout', '--stream-replicas'],
    host: ['--nats', '--run', '--device', '--gpu', '--datacenter', '--heartbeat'],
    status: ['--nats', '--run', '--json'],
    timeline: ['--trace-file', '--out', '--json'],
    export: ['--out', '--checkpoint-dir', '--nats', '--run', '--replica', '--tokenizer'],
    eval: ['--model', '--checkpoint-dir', '--data', '--batches'],
    generate: ['--model', '--prompt', '--max-tokens', '--temperature', '--top-k', '--top-p', '--seed'],
    chaos: ['--kills', '--seed', '--targets', '--nats-servers', '--standbys', '--checkpoint-every', '--json', '--bottleneck ', '--bottleneck-quant'],
  };
  for (const [command, flags] of Object.entries(expected)) {
    const help = (await caravan(command, '--help')).stdout;
    for (const flag of flags) t.regex(help, new RegExp(flag), `${command} --help names ${flag}`);
  }
});

let gpuUsable = true;
try {
  cudaDevice(0);
} catch {
  gpuUsable = false;
}
// Where a GPU is usable the host would go on to connect; test/engine/cuda.test.ts covers that machine.
(gpuUsable ? test.skip : test)('a host asked for a GPU it cannot use says why, in one line, before it joins a run', async (t) => {
  // No NATS server is needed: the refusal comes first.
  const err = await t.throwsAsync(caravan('host', '--nats', 'nats://127.0.0.1:1', '--run', 'r1', '--device', 'cuda'));
  t.regex((err as Error & { stderr: string }).stderr.trim(),
    /^caravan: --device cuda --gpu 0: (no CUDA GPU is usable on this machine \(.+\)|this build of the engine has no CUDA backend .+)$/);
});

test('status of a run that does not exist is an error, and creates nothing', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  for (let i = 0; i < 2; i++) {
    const err = await t.throwsAsync(caravan('status', '--nats', server.url, '--run', 'no-such-run'));
    t.regex((err as Error & { stderr: string }).stderr, /no run 'no-such-run' on nats:\/\/127\.0\.0\.1:\d+/);
  }
});

test('a bad run id is refused', async (t) => {
  const err = await t.throwsAsync(caravan('status', '--nats', 'nats://127.0.0.1:1', '--run', 'a.b'));
  t.regex((err as Error & { stderr: string }).stderr, /invalid run id 'a\.b'/);
});

test('a bad flag value exits non-zero with one line naming it', async (t) => {
  const err = await t.throwsAsync(caravan('train', '--steps', 'many'));
  t.regex((err as Error & { stderr: string }).stderr, /--steps must be a positive integer, got 'many'/);
});

test('bad compression flags are refused, each in one line naming it', async (t) => {
  const stderr = async (...args: string[]) => ((await t.throwsAsync(caravan('train', '--steps', '1', ...args))) as Error & { stderr: string }).stderr;
  t.regex(await stderr('--bottleneck', '0'), /--bottleneck must be a positive integer, got '0'/);
  t.regex(await stderr('--bottleneck', '4', '--stages', '1'), /--bottleneck needs at least 2 stages/);
  t.regex(await stderr('--bottleneck', '129', '--stages', '2'), /bottlenecks\[0\]\.width must be an integer in \[1, dModel=128\], got 129/);
  t.regex(await stderr('--bottleneck-quant', 'mxint8'), /bottleneckQuant 'mxint8' needs at least one bottleneck/);
  t.regex(await stderr('--bottleneck-quant', 'int4'), /argument 'int4' is invalid/);
});

test('more stages than layers is refused clearly', async (t) => {
  const err = await t.throwsAsync(caravan('train', '--stages', '9', '--steps', '1'));
  t.regex((err as Error & { stderr: string }).stderr, /training.stages 9 exceeds model.nLayers 4/);
});

test('caravan train --json prints one summary line', async (t) => {
  const { stdout } = await caravan('train', '--steps', '2', '--seq', '32', '--batch', '2', '--json');
  const lines = stdout.trim().split('\n');
  t.is(lines.length, 1);
  const summary = JSON.parse(lines[0]);
  t.is(summary.steps, 2);
  t.is(summary.losses.length, 2);
  t.regex(summary.params_sha256, /^[0-9a-f]{64}$/);
  t.is(summary.mode, 'nats');
});

test('caravan chaos refuses a kill target that does not exist, naming it', async (t) => {
  const err = await t.throwsAsync(caravan('chaos', '--targets', 'gpu', '--kills', '1'));
  t.regex((err as Error & { stderr: string }).stderr, /unknown kill target 'gpu'/);
});
