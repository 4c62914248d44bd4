// Validation loss for the dashboard, computed by the dashboard itself on its
// own CPU: a distributed run's stages never see the whole model, so nobody
// in the run can. Whenever every stage of replica 0 has a checkpoint after
// the same step, and once the final states are stored, it stitches those
// stage states into one model (checking each object's SHA-256 against the
// slot record, since anyone may write the store) and evaluates it on the
// held-out split of the run's own data. One evaluation at a time; a
// checkpoint dropped before it was read (a newer one replaced it) is passed
// over. The cost is the observer's, never the run's; for models too big for
// the dashboard's machine, `--validate-batches 0` turns it off.
import { createHash } from 'node:crypto';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { RunSummary, SlotRecord } from '../../schemas/run-records.ts';
import { loadTokens, TokenDataset } from '../data/index.ts';
import { validationLoss } from '../export/eval-model.ts';
import { exportedFromStitched } from '../export/hf-llama.ts';
import { stitchStageStates, type StageStateBlob } from '../export/stitch-stages.ts';
import type { Logger } from '../log.ts';
import type { RunResources } from '../transport/run-resources.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export interface ValidationPoint {
  /** Steps trained: the weights after step `step - 1`. */
  readonly step: number;
  readonly loss: number;
  /** Epoch ms of the record that made the weights available. */
  readonly t: number;
}

interface StateObject {
  readonly name: string;
  readonly sha256: string | undefined;
}

export class Validation {
  private readonly done = new Map<number, ValidationPoint>();
  private readonly tried = new Set<number>();
  private queue: Promise<void> = Promise.resolve();
  private dataset: Promise<TokenDataset> | undefined;
  error: string | null = null;

  constructor(private readonly o: { readonly batches: number; readonly log: Logger }) {}

  points(): ValidationPoint[] {
    return [...this.done.values()].sort((a, b) => a.step - b.step);
  }

  settled(): Promise<void> {
    return this.queue;
  }

  /** The slot records as they stand: if every stage of replica 0 has a checkpoint after the same step, evaluates it. */
  checkpoints(res: RunResources, config: RunConfig, slots: readonly SlotRecord[], t: number): void {
    const S = config.training.stages;
    const replica0 = Array.from({ length: S }, (_, s) => slots.find((x) => x.replica === 0 && x.stage === s)?.checkpoint);
    if (replica0.some((c) => !c)) return;
    const step = replica0[0]!.step;
    if (replica0.some((c) => c!.step !== step)) return;
    this.evaluate(res, config, step + 1, replica0.map((c) => ({ name: c!.object, sha256: c!.sha256 })), t);
  }

  /** The run finished: its final states are the weights after its last step. */
  finalStates(res: RunResources, config: RunConfig, summary: RunSummary, t: number): void {
    const objects = stageRanges(config).map(([begin, end]) => ({ name: res.names.finalState(0, begin, end), sha256: undefined }));
    this.evaluate(res, config, summary.steps, objects, t);
  }

  private evaluate(res: RunResources, config: RunConfig, step: number, objects: StateObject[], t: number): void {
    if (this.o.batches <= 0 || this.tried.has(step)) return;
    this.tried.add(step);
    this.queue = this.queue.then(async () => {
      const blobs: StageStateBlob[] = [];
      for (const o of objects) {
        const bytes = await res.objects.getBlob(o.name);
        if (!bytes) {
          this.o.log.debug({ step, object: o.name }, 'dashboard: a checkpoint was dropped before validation read it');
          return;
        }
        const sha = createHash('sha256').update(bytes).digest('hex');
        if (o.sha256 && sha !== o.sha256) throw new Error(`object ${o.name} is not what its holder reported (SHA-256 ${sha.slice(0, 12)}…, reported ${o.sha256.slice(0, 12)}…)`);
        blobs.push({ source: o.name, bytes });
      }
      const t0 = Date.now();
      const loss = await this.lossOf(config, blobs);
      this.done.set(step, { step, loss, t });
      this.o.log.debug({ step, loss, ms: Date.now() - t0 }, 'dashboard: validation loss');
    }).catch((err: Error) => {
      this.error = `validation after step ${step}: ${err.message}`;
      this.o.log.warn({ step, err: err.message }, 'dashboard: validation failed');
    });
  }

  /** Mean cross-entropy per token over the held-out split, `batches` batches of the run's own batch size and sequence length. */
  private async lossOf(config: RunConfig, blobs: StageStateBlob[]): Promise<number> {
    const t = config.training;
    const dataset = await (this.dataset ??= loadTokens(config).then((tokens) => new TokenDataset(tokens)));
    const exported = exportedFromStitched(stitchStageStates(blobs), t.tokenizer);
    return validationLoss(exported, dataset, { batches: this.o.batches, batchSize: t.batchSize, seqLen: t.seqLen, threads: 1 }).loss;
  }
}
