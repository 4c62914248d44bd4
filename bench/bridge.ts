// `npm run bench -- bridge`: the Bridge over NATS with real host processes.
// 1) How stages sync together: for each outer step, the span from the first
//    contribution of any stage to the last stored result, against each
//    stage's own span; parallel_speedup = S × (mean one-stage span) / (all-
//    stages span): S when the stages' syncs overlap completely.
// 2) What the replicas gain: validation loss (the held-out split, the
//    exported model of replica 0) after the same outer steps for R = 1, 2, 3
//    at the same per-replica batch, each replica on its own shard, beside
//    tokens and wall-clock. On this 2-core machine replicas share the CPU, so
//    wall-clock gains are not expected here.
import { loadRunConfig } from '../runtime/config/load-run-config.ts';
import { evalExported } from '../runtime/export/eval-model.ts';
import { exportedFromStitched } from '../runtime/export/hf-llama.ts';
import { statesFromRun } from '../runtime/export/run-stage-states.ts';
import { stitchStageStates } from '../runtime/export/stitch-stages.ts';
import { createLogger } from '../runtime/log.ts';
import { trainDistributed } from '../runtime/train/train-distributed.ts';

function flag(args: string[], name: string, fallback: number): number {
  const a = args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split('=')[1]) : fallback;
}

export async function benchBridge(args: string[]): Promise<Record<string, unknown>> {
  const S = flag(args, 'stages', 4), H = flag(args, 'sync-every', 10), outers = flag(args, 'outer-steps', 6);
  const replicaCounts = [1, 2, 3].filter((r) => r <= flag(args, 'max-replicas', 3));
  const rows: Array<Record<string, number>> = [];
  let sync: Record<string, number> = {};
  for (const R of replicaCounts) {
    const config = await loadRunConfig({
      preset: 'tiny',
      overrides: { training: { steps: H * outers, stages: S, replicas: R, microbatches: 2, batchSize: 8, seqLen: 128, checkpointEvery: 0, bridge: { syncEvery: H } as never } },
    });
    const began = performance.now();
    let valLoss = NaN;
    const summary = await trainDistributed({
      config, log: createLogger('bench', 'silent'),
      onFinished: async ({ url, run }) => {
        const { blobs } = await statesFromRun(url, run, 0);
        valLoss = (await evalExported(exportedFromStitched(stitchStageStates(blobs), 'byte'), { batches: 8, batchSize: 8, seqLen: 128 })).loss;
      },
    });
    const wall = (performance.now() - began) / 1000;
    const syncs = summary.bridge_syncs!;
    const tokens = R * H * outers * 2 * 8 * 128;
    rows.push({ replicas: R, val_loss: +valLoss.toFixed(4), train_loss_r0: +(summary.final_loss ?? NaN).toFixed(4), tokens, wall_s: +wall.toFixed(1) });
    console.log(`R=${R}: validation loss ${valLoss.toFixed(4)} after ${outers} outer steps (${tokens} tokens, ${wall.toFixed(1)} s)`);
    if (R === Math.max(...replicaCounts)) {
      let all = 0, one = 0;
      for (let o = 1; o <= outers; o++) {
        const spans = syncs.filter((s) => s.outer === o);
        all += Math.max(...spans.map((s) => s.finished_ms)) - Math.min(...spans.map((s) => s.first_ms));
        one += spans.reduce((a, s) => a + s.finished_ms - s.first_ms, 0) / spans.length;
      }
      sync = {
        sync_s_all_stages: +(all / outers / 1000).toFixed(3),
        sync_s_one_stage: +(one / outers / 1000).toFixed(3),
        parallel_speedup: +((S * one) / all).toFixed(2),
        payload_bytes_raw: syncs.reduce((a, s) => a + s.bytes_raw, 0),
        payload_bytes_wire: syncs.reduce((a, s) => a + s.bytes_wire, 0),
      };
      console.log(`R=${R}, S=${S}: all stages sync in ${sync.sync_s_all_stages} s, one stage in ${sync.sync_s_one_stage} s: ${sync.parallel_speedup}× of ${S}`);
    }
  }
  return { bench: 'bridge', stages: S, replicas: Math.max(...replicaCounts), sync_every: H, outer_steps: outers, ...sync, by_replicas: rows };
}
