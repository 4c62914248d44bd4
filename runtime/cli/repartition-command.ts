// `caravan repartition`: a run's stage states of one moment re-sharded for
// another split of the layers (runtime/checkpoint/reshard-states.ts), written
// as an in-process run's checkpoints, so that `caravan train --in-process
// --checkpoint-dir OUT --resume` with the new split goes on from there to the
// weights the old split would have reached. With --live, a running run is
// re-split where it stands: its coordinator ends it at the next step and it
// goes on as a successor run with the new split (runtime/coordinator/resplit.ts).
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { hashParams } from '../../native/index.ts';
import { layerRanges, splitLayers } from '../../schemas/stage-layers.ts';
import { reshardStitched } from '../checkpoint/reshard-states.ts';
import { statesFromCheckpointDir, statesFromRun } from '../export/run-stage-states.ts';
import { stitchStageStates } from '../export/stitch-stages.ts';
import { connectToRun } from '../transport/connect.ts';
import { requestResplit } from '../transport/coordinator-channel.ts';
import { runNames, validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt, positiveInt } from './options.ts';

interface RepartitionFlags {
  out?: string;
  live?: boolean;
  checkpointDir?: string;
  nats?: string;
  run?: string;
  replica: number;
  nkey?: string;
  stages?: number;
  stageLayers?: number[];
  json?: boolean;
}

export function repartitionCommand(program: Command): void {
  program
    .command('repartition')
    .description("re-shard a run's stage states (one optimizer step, every layer once) for another split of the layers, as in-process checkpoints that `caravan train --in-process --checkpoint-dir OUT --resume` continues with that split")
    .option('--out <dir>', 'directory to write the new stage states to (stage-<a>-<b>.safetensors)')
    .option('--live', "instead of --out: re-split the running run (--nats URL --run ID --stage-layers a,b,…, the coordinator's --nkey) where it stands; it goes on as a successor run `<run>-sN`")
    .option('--checkpoint-dir <dir>', "an in-process run's checkpoints (stage-<a>-<b>.safetensors)")
    .option('--nats <url>', "instead: a NATS run's server: its final states from the Object Store")
    .option('--run <id>', 'with --nats: the run id')
    .option('--replica <n>', 'with --nats: which replica', nonNegativeInt('--replica'), 0)
    .option('--nkey <file>', 'with --nats: authenticate as this nkey user (an observer seed from `caravan creds`)')
    .option('--stages <n>', 'the new number of stages, the layers split as evenly as possible', positiveInt('--stages'))
    .option('--stage-layers <list>', 'instead: layers per new stage, comma-separated', (v: string) => v.split(',').map((x) => Number(x.trim())))
    .option('--json', 'print one JSON line: the new split, the optimizer step, params_sha256 (unchanged)')
    .action(async (flags: RepartitionFlags) => {
      if (flags.live) return resplitLive(flags);
      if (!flags.out) throw new Error('give --out DIR for the new stage states (or --live to re-split a running run)');
      if (!!flags.checkpointDir === !!flags.nats) throw new Error('give exactly one source: --checkpoint-dir DIR or --nats URL --run ID');
      if ((flags.stages === undefined) === (flags.stageLayers === undefined)) throw new Error('give exactly one new split: --stages N or --stage-layers a,b,…');
      if (flags.nats && !flags.run) throw new Error('--nats needs --run ID');
      const blobs = flags.nats ? (await statesFromRun(flags.nats, validateRunId(flags.run!), flags.replica, flags.nkey)).blobs : await statesFromCheckpointDir(flags.checkpointDir!);
      const whole = stitchStageStates(blobs);
      const nLayers = whole.model.nLayers;
      const counts = flags.stageLayers;
      if (counts && (!counts.every((n) => Number.isSafeInteger(n) && n > 0) || counts.reduce((a, b) => a + b, 0) !== nLayers)) {
        throw new Error(`--stage-layers ${counts.join(',')}: positive layer counts that add up to the model's ${nLayers} layers are needed`);
      }
      if (flags.stages !== undefined && flags.stages > nLayers) throw new Error(`--stages ${flags.stages}: the model has only ${nLayers} layers`);
      const ranges = counts ? layerRanges(counts) : splitLayers(nLayers, flags.stages!);
      const states = reshardStitched(whole, blobs, ranges);
      await mkdir(flags.out, { recursive: true });
      for (const s of states) await writeFile(join(flags.out, `stage-${s.layers[0]}-${s.layers[1]}.safetensors`), s.bytes);
      // The parameters are the same tensors, only shared out anew: the run's params_sha256 is theirs.
      const sha = hashParams(whole.tensors.map((t) => t.data));
      const summary = { out: flags.out, from_stages: blobs.length, layers_by_stage: ranges.map(([b, e]) => e - b), optimizer_step: whole.optimizerStep, params_sha256: sha };
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
      else process.stderr.write(`re-sharded ${blobs.length} stage state(s) at optimizer step ${whole.optimizerStep} into layers ${summary.layers_by_stage.join('/')} in ${flags.out} (params sha256 ${sha.slice(0, 16)}…)\n`);
    });
}

/** `--live`: asks the run's coordinator to re-split the run where it stands, and says where it goes on. */
async function resplitLive(flags: RepartitionFlags): Promise<void> {
  if (!flags.nats || !flags.run || !flags.stageLayers) throw new Error('--live needs --nats URL --run ID --stage-layers a,b,…');
  if (flags.out || flags.checkpointDir || flags.stages !== undefined) throw new Error('--live takes neither --out, --checkpoint-dir nor --stages: the run\'s own states are re-split, as --stage-layers says');
  const nc = await connectToRun(flags.nats, `caravan-resplit-${flags.run}`, validateRunId(flags.run), flags.nkey);
  try {
    const reply = await requestResplit(nc, runNames(flags.run), flags.stageLayers);
    if (flags.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
    if (!reply.ok) throw new Error(`run ${flags.run} cannot be re-split: ${reply.reason}`);
    if (!flags.json) process.stderr.write(`run ${flags.run} ends before step ${reply.step} and goes on from there as run ${reply.run}, split ${flags.stageLayers.join('/')}\n`);
  } finally {
    await nc.close();
  }
}
