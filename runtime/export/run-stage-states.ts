// Where a run's stage states come from: an in-process run's checkpoint
// directory (stage-<a>-<b>.safetensors), or a NATS run's final states in its
// Object Store, with its config (and so its tokenizer) from KV. A run
// re-split live ended as its successor: its final states are that run's.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RunConfig } from '../../schemas/run-config.ts';
import { connectToRun } from '../transport/connect.ts';
import { openExistingRun } from '../transport/run-resources.ts';
import { RunStateReader } from '../transport/run-state-reader.ts';
import type { StageStateBlob } from './stitch-stages.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export async function statesFromCheckpointDir(dir: string): Promise<StageStateBlob[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new Error(`cannot read checkpoint directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const files = names.filter((n) => /^stage-\d+-\d+\.safetensors$/.test(n)).sort();
  if (files.length === 0) throw new Error(`${dir} holds no stage checkpoints (stage-<begin>-<end>.safetensors)`);
  return Promise.all(files.map(async (f) => ({ source: join(dir, f), bytes: await readFile(join(dir, f)) })));
}

export async function statesFromRun(url: string, run: string, replica: number, nkey?: string): Promise<{ blobs: StageStateBlob[]; config: RunConfig }> {
  const nc = await connectToRun(url, `caravan-export-${run}`, run, nkey);
  try {
    const reader = new RunStateReader(await openExistingRun(nc, run, url));
    const successor = (await reader.state())?.resplit?.run;
    if (successor) return await statesFromRun(url, successor, replica, nkey);
    const config = await reader.config();
    if (!config) throw new Error(`run '${run}' has no config in KV`);
    if (!Number.isSafeInteger(replica) || replica < 0 || replica >= config.training.replicas) {
      throw new Error(`run '${run}' has replicas 0..${config.training.replicas - 1}, not ${replica}`);
    }
    const blobs: StageStateBlob[] = [];
    for (const [begin, end] of stageRanges(config)) {
      const { name, bytes } = await reader.finalState(replica, begin, end);
      if (!bytes) throw new Error(`run '${run}' has no final state ${name} (has the run finished?)`);
      blobs.push({ source: `${run}:${name}`, bytes });
    }
    return { blobs, config };
  } finally {
    await nc.close();
  }
}
