// An audit by exact replay of one slot over one checkpoint interval. caravan
// is bit-exact: from the state the slot's holder checkpointed before the
// interval (or the run's initial weights), the inputs it took (the frames in
// its input stream, signed by its neighbours) and the coordinator's commits,
// anyone on the same backend computes the same bits the honest holder did. So
// the replay checks, step by step, with no tolerance:
//   - the frames it took are the ones their senders reported sending;
//   - the frames it sent are the ones these inputs give (digests);
//   - its Σg² per tensor and, on the last stage, its loss;
// and after the last step, its state against the checkpoint it reported.
// The first difference is the verdict, naming the slot at fault.
//
// The replay runs each microbatch's forward and fused backward in turn:
// weight gradients still go in microbatch order, the one the engine's split
// and fused backwards agree on bit for bit (test/engine/split-backward.test.ts),
// so the schedule the holder ran does not matter.
import { createHash } from 'node:crypto';
import { EngineStage } from '../../native/index.ts';
import type { OutputDigests } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { decodeFrame, encodeFrameWithCodecs, type FrameKind } from '../../schemas/tensor-frame.ts';
import { boundaryCodecs, FRAME_CODECS } from '../codecs/index.ts';
import type { TokenDataset } from '../data/index.ts';
import { combineDigests, frameDigest } from './output-digests.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

/** What the slot's holder reported for a step: its 'done' report. */
export interface ReportedStep {
  readonly sumSquares: ReadonlyArray<number | null>;
  readonly loss?: number | null;
  readonly digests?: OutputDigests;
}

export interface SlotInterval {
  readonly run: string;
  readonly config: RunConfig;
  readonly replica: number;
  readonly stage: number;
  /** The state checkpointed after step `step`; undefined: the run's start (the seed's initial weights). */
  readonly from: { readonly step: number; readonly state: Uint8Array } | undefined;
  /** The last step of the interval, and the SHA-256 of the state its holder reported after it. */
  readonly to: { readonly step: number; readonly sha256: string };
  /** The frames the slot took (signatures already checked), encoded, in any order; a step's later attempt wins. */
  readonly inputs: ReadonlyArray<{ readonly kind: FrameKind; readonly bytes: Uint8Array }>;
  /** The replica's commit of each step. */
  readonly commits: ReadonlyMap<number, { readonly gradScale: number; readonly skip: boolean }>;
  /** The slot's own step reports. */
  readonly reports: ReadonlyMap<number, ReportedStep>;
  /** The neighbours' reported digests of what they sent this slot: activations from stage − 1, gradients from stage + 1. */
  readonly sent: ReadonlyMap<number, { readonly act?: string; readonly grad?: string }>;
  /** The run's tokens, for a first or last stage (or one that needs them). */
  readonly dataset: TokenDataset | undefined;
}

export type AuditVerdict =
  | { readonly ok: true; readonly steps: number; readonly ms: number }
  | { readonly ok: false; readonly step: number; readonly culprit: { readonly replica: number; readonly stage: number }; readonly what: string; readonly ms: number };

class Mismatch extends Error {
  constructor(readonly step: number, readonly culpritStage: number, what: string) { super(what); }
}

/** Replays the slot over the interval and compares; never throws for a difference, only for evidence it cannot use. */
export async function replayInterval(iv: SlotInterval): Promise<AuditVerdict> {
  const started = performance.now();
  const ms = () => Math.round(performance.now() - started);
  const { config, replica, stage } = iv;
  const { model, optim, training: t } = config;
  const M = t.microbatches;
  const [begin, end] = stageRanges(config)[stage];
  const engine = new EngineStage({ model, optim, layerBegin: begin, layerEnd: end, seed: t.seed, threads: t.cpuThreads });
  try {
    if (iv.from) engine.loadState(iv.from.state, `audit of slot ${replica}.${stage} from step ${iv.from.step}`);
    const taken = inputsByStep(iv, engine);
    const codecs: Record<FrameKind, ReturnType<typeof boundaryCodecs>> = { act: boundaryCodecs(model, end, t.lz4), grad: boundaryCodecs(model, begin, t.lz4) };
    const first = iv.from ? iv.from.step + 1 : 0;
    for (let step = first; step <= iv.to.step; step++) {
      const report = iv.reports.get(step);
      const commit = iv.commits.get(step);
      if (!report) throw new Error(`no step report of slot ${replica}.${stage} for step ${step}`);
      if (!commit) throw new Error(`no commit of replica ${replica} for step ${step}`);
      checkSenders(iv, step, taken);
      const sent: Record<FrameKind, string[]> = { act: [], grad: [] };
      let lossSum = 0;
      for (let mb = 0; mb < M; mb++) {
        const id = step * M + mb;
        const batch = iv.dataset?.batchAt({ seed: t.seed, replica, shards: t.replicas, step, microbatch: mb, batchSize: t.batchSize, seqLen: t.seqLen, split: 'train' });
        const input = engine.isFirst ? batch!.tokens : need(taken, 'act', step, mb, iv);
        const { value: out } = await engine.forwardTrainAsync(id, input, t.batchSize, t.seqLen, engine.isLast ? batch?.targets : undefined, engine.needsTokens ? batch?.tokens : undefined);
        if (typeof out === 'number') lossSum += out;
        else sent.act.push(digestOf(out, 'act', codecs.act, iv, step, mb));
        const { value: gradIn } = await engine.backwardAsync(id, engine.isLast ? null : need(taken, 'grad', step, mb, iv));
        if (gradIn) sent.grad.push(digestOf(gradIn, 'grad', codecs.grad, iv, step, mb));
      }
      for (const kind of ['act', 'grad'] as const) {
        if (!sent[kind].length) continue;
        const recomputed = combineDigests(sent[kind]);
        const reported = report.digests?.[kind];
        if (reported !== recomputed) {
          throw new Mismatch(step, stage, `the ${kind} frames it reported sending at step ${step} (digest ${short(reported)}) are not what its inputs and state give (${short(recomputed)})`);
        }
      }
      const sums = engine.gradSumSquares();
      sums.forEach((v, i) => {
        const reported = report.sumSquares[i];
        const same = Number.isFinite(v) ? reported === v : reported === null;
        if (!same) throw new Mismatch(step, stage, `its Σg² of tensor ${i} at step ${step} was reported ${reported}, the replay gives ${v}`);
      });
      if (sums.length !== report.sumSquares.length) throw new Mismatch(step, stage, `it reported ${report.sumSquares.length} Σg² at step ${step}, the stage has ${sums.length} tensors`);
      if (engine.isLast) {
        const loss = lossSum / M;
        const same = Number.isFinite(loss) ? report.loss === loss : report.loss === null;
        if (!same) throw new Mismatch(step, stage, `its loss at step ${step} was reported ${report.loss}, the replay gives ${loss}`);
      }
      if (commit.skip) engine.zeroGrad();
      else engine.step(commit.gradScale);
    }
    const sha = createHash('sha256').update(engine.state()).digest('hex');
    if (sha !== iv.to.sha256) throw new Mismatch(iv.to.step, stage, `its state after step ${iv.to.step} (sha256 ${short(iv.to.sha256)}) is not the replay's (${short(sha)})`);
    return { ok: true, steps: iv.to.step - first + 1, ms: ms() };
  } catch (err) {
    if (!(err instanceof Mismatch)) throw err;
    return { ok: false, step: err.step, culprit: { replica, stage: err.culpritStage }, what: err.message, ms: ms() };
  }
}

const short = (d: string | undefined) => (d ? `${d.slice(0, 12)}…` : 'none');

type Taken = Map<string, { attempt: number; data: Float32Array; digest: string }>;

/** Each (kind, step, microbatch)'s input at its latest attempt: what the holder computed on. */
function inputsByStep(iv: SlotInterval, engine: EngineStage): Taken {
  const { config, replica, stage } = iv;
  const width: Record<FrameKind, number> = { act: engine.inWidth, grad: engine.outWidth };
  const taken: Taken = new Map();
  for (const { kind, bytes } of iv.inputs) {
    const frame = decodeFrame(bytes, { run: iv.run, replica, stage, kind, width: width[kind], maxSeqLen: config.model.maxSeqLen, codecs: FRAME_CODECS });
    const k = `${kind}/${frame.step}/${frame.microbatch}`;
    const had = taken.get(k);
    if (!had || had.attempt < frame.attempt) taken.set(k, { attempt: frame.attempt, data: frame.data, digest: frameDigest(bytes) });
  }
  return taken;
}

function need(taken: Taken, kind: FrameKind, step: number, mb: number, iv: SlotInterval): Float32Array {
  const input = taken.get(`${kind}/${step}/${mb}`);
  if (!input) throw new Error(`no ${kind} frame of step ${step} microbatch ${mb} in the input stream of slot ${iv.replica}.${iv.stage}`);
  return input.data;
}

/** The frames the slot took at `step` against what their senders reported sending: a sender whose report and frames disagree is at fault. */
function checkSenders(iv: SlotInterval, step: number, taken: Taken): void {
  const M = iv.config.training.microbatches;
  for (const kind of ['act', 'grad'] as const) {
    const reported = iv.sent.get(step)?.[kind];
    if (reported === undefined) continue;
    const digests = Array.from({ length: M }, (_, mb) => taken.get(`${kind}/${step}/${mb}`)?.digest);
    if (digests.some((d) => d === undefined)) continue;
    const received = combineDigests(digests as string[]);
    const sender = kind === 'act' ? iv.stage - 1 : iv.stage + 1;
    if (received !== reported) {
      throw new Mismatch(step, sender, `the ${kind} frames stage ${sender} sent at step ${step} (digest ${short(received)}) are not the ones it reported sending (${short(reported)})`);
    }
  }
}

function digestOf(data: Float32Array, kind: FrameKind, codecs: ReturnType<typeof boundaryCodecs>, iv: SlotInterval, step: number, mb: number): string {
  const { training: t } = iv.config;
  const encoded = encodeFrameWithCodecs({ run: iv.run, replica: iv.replica, stage: kind === 'act' ? iv.stage + 1 : iv.stage - 1, step, microbatch: mb, attempt: 0, kind, shape: [t.batchSize, t.seqLen, data.length / (t.batchSize * t.seqLen)], data }, codecs);
  return frameDigest(encoded.bytes);
}
