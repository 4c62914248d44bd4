// Audits by exact replay, run by the coordinator (training.audit). Each
// checkpoint interval of each slot — from the checkpoint before (or the run's
// start) to the one its holder just reported (or its final state) — is
// audited with probability `rate`, drawn from (seed, replica, stage, step)
// alone, so a restarted coordinator draws the same. An audited interval's
// evidence is held: the checkpoint before it is not dropped and the slot's
// inputs are not purged past where it started, until the replay
// (runtime/audit/replay-interval.ts) is done. Audits run one at a time, off
// the run's path: the stages go on meanwhile.
//
// A drawn audit is saved in the run's state before the checkpoint that
// closes its interval is recorded, and leaves it once done: a coordinator
// restarted in between finds it there and replays it (the checkpoint's report,
// replayed from the log, is recorded already and draws nothing), so a restart
// never skips an interval.
//
// The replay computes on this process's CPU engine, so it audits only slots
// whose holders compute on the CPU: a GPU's bits are its own, and another
// backend would accuse an honest host. A difference names the slot, its
// holder and the step, and is handed to rewinds.ts: the holder is banned and
// its replica trains again from its start, so nothing a dishonest holder
// computed reaches the final weights. Audits drawn before a rewind are void.
import { createHash } from 'node:crypto';
import type { CheckpointPointer, StageReport } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { AuditSummary, PendingAudit } from '../../schemas/run-records.ts';
import { replayInterval, type ReportedStep } from '../audit/replay-interval.ts';
import type { Catch } from './rewinds.ts';
import { loadTokens, TokenDataset } from '../data/index.ts';
import type { Logger } from '../log.ts';
import { AUDITS_PENDING_PER_SLOT } from '../transport/edge-limits.ts';
import type { SlotEvidence } from '../transport/slot-evidence.ts';
import type { SlotStore } from '../transport/slot-store.ts';

type Resume = CheckpointPointer['resume'];

/** An interval drawn: `from` is the checkpoint it starts from (none: the run's start) and says where its inputs start. */
type Hold = PendingAudit;

/** Whether (replica, stage)'s interval ending at `step` is audited: a draw from the seed, the same in every process. */
export function auditDrawn(seed: number, rate: number, replica: number, stage: number, step: number): boolean {
  const h = createHash('sha256').update(`caravan-audit/${seed}/${replica}/${stage}/${step}`).digest();
  return h.readUInt32BE(0) / 2 ** 32 < rate;
}

export class Audits {
  private readonly reports = new Map<string, ReportedStep>();        // `${replica}.${stage}.${step}`: the slot's step report
  private readonly commits = new Map<string, { gradScale: number; skip: boolean }>();  // `${replica}.${step}`
  private readonly latest = new Map<string, CheckpointPointer>();    // `${replica}.${stage}`: the last recorded checkpoint
  private readonly devices = new Map<string, string>();              // `${replica}.${stage}`: what its holder computes on
  private readonly holds: Hold[] = [];
  private readonly voided = new Set<Hold>();                        // drawn before their replica was rewound
  private readonly paused = new Set<number>();                      // replicas being rewound: what their old epoch reports is void
  private queue: Promise<void> = Promise.resolve();
  private dataset: Promise<TokenDataset> | undefined;
  private readonly summary: { audited: number; skipped: number; steps: number; ms: number; failed: AuditSummary['failed'] };

  constructor(private readonly o: {
    readonly run: string; readonly config: RunConfig; readonly slots: SlotStore; readonly evidence: SlotEvidence; readonly log: Logger;
    /** A replay found a difference: the slot at fault, its first wrong step and its holder (rewinds.ts takes it from there). */
    readonly caught: (c: Catch) => void;
    /** A difference no holder can be named for: the run fails with this. */
    readonly failed: (err: Error) => void;
    /** A checkpoint an audit held, of an epoch a rewind voided: the rewind drops it when nothing reads it any more. */
    readonly orphaned?: (replica: number, stage: number, object: string) => void;
    /** Each rewind so far, for the summary. */
    readonly rewound?: () => NonNullable<AuditSummary['rewinds']>;
    /** The audits so far changed (one more drawn or done): saved in the run's live state; resolves once saved. */
    readonly changed?: (summary: AuditSummary) => Promise<void> | void;
    /** The replica's current epoch (its rewinds so far). */
    readonly epochOf: (replica: number) => number;
    /** What the audits had found before this coordinator (restarted) took over: the counts go on from there. */
    readonly prior?: AuditSummary;
  }) {
    const p = o.prior;
    this.summary = { audited: p?.audited ?? 0, skipped: p?.skipped ?? 0, steps: p?.steps_replayed ?? 0, ms: p?.replay_ms ?? 0, failed: [...(p?.failed ?? [])] };
    // Held from the start, so nothing they read is dropped; replayed once the log is (resume()).
    this.holds.push(...(p?.pending ?? []));
  }

  /** A restarted coordinator, before it replays the log: each slot's latest checkpoint, as its record has it. */
  async restore(): Promise<void> {
    const { stages, replicas } = this.o.config.training;
    for (let r = 0; r < replicas; r++) {
      for (let s = 0; s < stages; s++) {
        const checkpoint = (await this.o.slots.read(r, s))?.checkpoint;
        if (checkpoint) this.latest.set(`${r}.${s}`, checkpoint);
      }
    }
  }

  /** The log is replayed: the audits the coordinator before had drawn and not done are replayed now, but those of an epoch a rewind voided. */
  resume(): void {
    for (const h of [...this.holds]) {
      if (h.epoch < this.o.epochOf(h.replica)) this.voided.add(h);
      this.enqueue(h);
    }
  }

  private get rate(): number { return this.o.config.training.audit?.rate ?? 0; }
  private get seed(): number { return this.o.config.training.audit?.seed ?? this.o.config.training.seed; }

  /** A signed step report of a slot: kept while an audit may need it. */
  reported(msg: Extract<StageReport, { type: 'done' }>): void {
    if (this.paused.has(msg.replica)) return;
    this.reports.set(`${msg.replica}.${msg.stage}.${msg.step}`, { sumSquares: msg.sumSquares, loss: msg.loss, digests: msg.digests });
    this.devices.set(`${msg.replica}.${msg.stage}`, msg.counters.compute.device);
  }

  /** A replica's commit of a step. */
  committed(replica: number, step: number, gradScale: number, skip: boolean): void {
    if (this.paused.has(replica)) return;
    this.commits.set(`${replica}.${step}`, { gradScale, skip });
  }

  /**
   * A checkpoint of the slot is about to be recorded, after `previous`: if the interval it closes is drawn, the
   * audit is held and saved first, and returned for checkpointed() (or cancel(), if the checkpoint is not recorded).
   */
  async drawn(replica: number, stage: number, previous: CheckpointPointer | undefined, current: CheckpointPointer): Promise<Hold | undefined> {
    if (!current.sha256) return undefined;
    const hold = this.draw(replica, stage, previous, { step: current.step, sha256: current.sha256 });
    if (hold) await this.o.changed?.(this.result());
    return hold;
  }

  /** The checkpoint drawn() was told of was not recorded after all: its audit goes. */
  cancel(hold: Hold): void {
    this.holds.splice(this.holds.indexOf(hold), 1);
    void this.o.changed?.(this.result());
  }

  /**
   * A checkpoint of the slot was recorded, and `drawn` is the audit drawn() held for it. Returns what of the
   * previous one may go now: its object (unless an audit reads it) and the slot's inputs below these sequences
   * (none past where a held interval starts).
   */
  checkpointed(replica: number, stage: number, previous: CheckpointPointer | undefined, current: CheckpointPointer, drawn: Hold | undefined): { dropPrevious: boolean; purgeBelow: Resume } {
    if (this.paused.has(replica)) return { dropPrevious: true, purgeBelow: current.resume };
    this.latest.set(`${replica}.${stage}`, current);
    if (drawn) this.enqueue(drawn);
    this.forgetBefore(replica);
    return { dropPrevious: !previous || !this.holds.some((h) => h.from?.object === previous.object), purgeBelow: this.purgeLimit(replica, stage, current.resume) };
  }

  /** The slot's final state was reported: its last interval, from its last checkpoint. */
  finalState(replica: number, stage: number, sha256: string): void {
    if (this.paused.has(replica)) return;
    const last = this.o.config.training.steps - 1;
    const from = this.latest.get(`${replica}.${stage}`);
    if (from && from.step >= last) return;
    const hold = this.draw(replica, stage, from, { step: last, sha256 }, true);
    if (hold) {
      void this.o.changed?.(this.result());
      this.enqueue(hold);
    }
  }

  /**
   * The replica is being rewound: audits drawn before are void (their evidence is of an epoch that no longer
   * counts), what was kept for them goes, and what its old epoch reports meanwhile is not kept.
   */
  rewinding(replica: number): void {
    for (const h of this.holds) if (h.replica === replica) this.voided.add(h);
    this.paused.add(replica);
    for (const m of [this.reports, this.latest, this.devices]) for (const k of m.keys()) if (k.startsWith(`${replica}.`)) m.delete(k);
    for (const k of this.commits.keys()) if (k.startsWith(`${replica}.`)) this.commits.delete(k);
  }

  /** The replica's new epoch began: its intervals are drawn and audited again. */
  rewound(replica: number): void {
    this.paused.delete(replica);
  }

  /** Settles once every audit begun so far is done. */
  settled(): Promise<void> {
    return this.queue;
  }

  /** The audits so far, for the run's summary. */
  result(): AuditSummary {
    const rewinds = this.o.rewound?.() ?? [];
    return {
      rate: this.rate, audited: this.summary.audited, skipped: this.summary.skipped, steps_replayed: this.summary.steps, replay_ms: this.summary.ms, failed: [...this.summary.failed],
      ...(rewinds.length ? { rewinds: [...rewinds] } : {}),
      ...(this.holds.length ? { pending: this.holds.filter((h) => !this.voided.has(h)).map((h) => ({ ...h })) } : {}),
    };
  }

  /**
   * Whether the interval of (replica, stage) ending at `to` is audited: drawn, not held already (a restarted
   * coordinator's saved audit), and not past the slot's limit of waiting audits. Drawn, it is held.
   */
  private draw(replica: number, stage: number, from: CheckpointPointer | undefined, to: Hold['to'], final = false): Hold | undefined {
    if (this.paused.has(replica) || this.rate <= 0 || !auditDrawn(this.seed, this.rate, replica, stage, to.step)) return undefined;
    const epoch = this.o.epochOf(replica);
    const slot = this.holds.filter((h) => h.replica === replica && h.stage === stage && !this.voided.has(h));
    if (slot.some((h) => h.epoch === epoch && h.to.step === to.step)) return undefined;
    // At most AUDITS_PENDING_PER_SLOT audits of a slot wait at once: its held inputs then span at most one interval more
    // than that, which the edge's cap leaves room for (edge-limits.ts). Past it the auditor is slower than the run.
    // The final interval is exempt: no frame comes after it, and its inputs are the ones the last checkpoint keeps anyway.
    if (!final && slot.length >= AUDITS_PENDING_PER_SLOT) {
      this.o.log.warn({ replica, stage, step: to.step }, 'audit skipped: the slot\'s earlier audits are still waiting (the auditor is slower than the run)');
      this.summary.skipped++;
      return undefined;
    }
    const hold: Hold = { replica, stage, epoch, ...(from ? { from } : {}), to };
    this.holds.push(hold);
    return hold;
  }

  private enqueue(hold: Hold): void {
    this.queue = this.queue.then(() => this.replayAndJudge(hold)).catch((err: Error) => {
      this.o.log.error({ replica: hold.replica, stage: hold.stage, step: hold.to.step, err: err.message }, 'audit could not run');
      this.summary.skipped++;
    }).finally(() => this.release(hold));
  }

  private async replayAndJudge(h: Hold): Promise<void> {
    const { config, evidence, slots, log } = this.o;
    const { replica, stage } = h;
    if (this.voided.has(h)) {
      log.debug({ replica, stage, step: h.to.step }, 'audit void: its replica was rewound since it was drawn');
      return;
    }
    const device = this.devices.get(`${replica}.${stage}`);
    if (device !== 'cpu') {
      log.info({ replica, stage, step: h.to.step, device }, 'audit skipped: its holder computes on another backend than this auditor\'s CPU');
      this.summary.skipped++;
      return;
    }
    const first = h.from ? h.from.step + 1 : 0;
    const state = h.from ? await evidence.checkpointState(h.from.object) : undefined;
    if (h.from && !state) throw new Error(`checkpoint ${h.from.object} is gone`);
    const inputs = [];
    for (const kind of ['act', 'grad'] as const) {
      if ((kind === 'act' && stage === 0) || (kind === 'grad' && stage === config.training.stages - 1)) continue;
      const sender = kind === 'act' ? stage - 1 : stage + 1;
      const stored = await evidence.storedInputs(replica, stage, kind, h.from?.resume[kind] ?? 1);
      for (const f of stored) {
        // The holder took only frames signed by the sending slot's holder: so does the replay.
        const signed = await slots.signers.check({ kind: 'frame', subject: f.subject, body: f.bytes, header: f.signature, replica, stage: sender, edge: kind, seq: f.seq });
        if (signed.ok) inputs.push({ kind, bytes: f.bytes });
      }
    }
    const steps = Array.from({ length: h.to.step - first + 1 }, (_, i) => first + i);
    const pick = <T>(m: Map<string, T>, key: (step: number) => string) => new Map(steps.flatMap((s) => (m.has(key(s)) ? [[s, m.get(key(s))!] as [number, T]] : [])));
    const verdict = await replayInterval({
      run: this.o.run, config, replica, stage, from: h.from && state ? { step: h.from.step, state } : undefined, to: h.to, inputs,
      commits: pick(this.commits, (s) => `${replica}.${s}`),
      reports: pick(this.reports, (s) => `${replica}.${stage}.${s}`),
      sent: new Map(steps.map((s) => [s, { act: this.reports.get(`${replica}.${stage - 1}.${s}`)?.digests?.act, grad: this.reports.get(`${replica}.${stage + 1}.${s}`)?.digests?.grad }])),
      dataset: await (this.dataset ??= loadTokens(config).then((tokens) => new TokenDataset(tokens))),
    });
    this.summary.ms += verdict.ms;
    if (verdict.ok) {
      this.summary.audited++;
      this.summary.steps += verdict.steps;
      log.info({ replica, stage, from: first, to: h.to.step, ms: verdict.ms }, 'audit passed');
      return;
    }
    const at = verdict.culprit;
    const record = await slots.read(at.replica, at.stage);
    const holder = record ? `host ${record.host} (generation ${record.generation})` : 'its holder';
    this.summary.failed.push({ replica: at.replica, stage: at.stage, step: verdict.step, host: record?.host ?? null, what: verdict.what });
    const message = `audit: slot ${at.replica}.${at.stage}, held by ${holder}, computed step ${verdict.step} wrongly: ${verdict.what} (replay of slot ${replica}.${stage}, steps ${first}–${h.to.step})`;
    log.error({ replica: at.replica, stage: at.stage, step: verdict.step, host: record?.host, what: verdict.what }, message);
    this.o.changed?.(this.result());  // in the run's state before anything else happens
    if (!record) this.o.failed(new Error(`${message}; the slot has no record, so no holder to ban`));
    else this.o.caught({ replica: at.replica, stage: at.stage, step: verdict.step, host: record.host });
  }

  /** An audit is over: it leaves the saved state, then what it held goes, unless another holds it. */
  private async release(h: Hold): Promise<void> {
    this.holds.splice(this.holds.indexOf(h), 1);
    const wasVoid = this.voided.delete(h);
    await this.o.changed?.(this.result());
    const { slots, log } = this.o;
    // Void (its replica was rewound since): what it held goes with the rewind's leftovers, once nothing reads it.
    if (wasVoid) {
      if (h.from && !this.holds.some((o) => o.from?.object === h.from!.object)) this.o.orphaned?.(h.replica, h.stage, h.from.object);
      return;
    }
    const current = this.latest.get(`${h.replica}.${h.stage}`);
    if (h.from && h.from.object !== current?.object && !this.holds.some((o) => o.from?.object === h.from!.object)) void slots.dropCheckpoint(h.from.object);
    if (current) {
      const below = this.purgeLimit(h.replica, h.stage, current.resume);
      for (const kind of ['act', 'grad'] as const) if (below[kind]) void slots.purgeInputs(h.replica, h.stage, kind, below[kind]!).catch(() => {});
    }
    this.forgetBefore(h.replica);
    log.debug({ replica: h.replica, stage: h.stage, step: h.to.step }, 'audit evidence released');
  }

  /** Where the slot's inputs may be purged up to: its checkpoint's resume, but not past an interval still held. */
  private purgeLimit(replica: number, stage: number, resume: Resume): Resume {
    const held = this.holds.filter((h) => h.replica === replica && h.stage === stage);
    const limit = (kind: 'act' | 'grad') => {
      const at = resume[kind];
      if (at === undefined) return undefined;
      return Math.min(at, ...held.map((h) => h.from?.resume[kind] ?? 1));
    };
    return { ...(limit('act') !== undefined ? { act: limit('act') } : {}), ...(limit('grad') !== undefined ? { grad: limit('grad') } : {}), control: resume.control };
  }

  /** Reports and commits no audit of the replica can need any more: at or before every stage's last checkpoint and every held interval's start. */
  /**
   * The first step of the replica an audit may still replay: after every stage's latest checkpoint and every held
   * interval's start. Its reports and commits are kept (and a control-log snapshot keeps what re-creates them).
   */
  firstNeeded(replica: number): number {
    const S = this.o.config.training.stages;
    const starts = Array.from({ length: S }, (_, s) => this.latest.get(`${replica}.${s}`)?.step ?? -1);
    for (const h of this.holds) if (h.replica === replica) starts.push(h.from?.step ?? -1);
    return Math.min(...starts) + 1;
  }

  private forgetBefore(replica: number): void {
    const keepAfter = this.firstNeeded(replica) - 1;
    if (keepAfter < 0) return;
    for (const k of this.reports.keys()) { const [r, , st] = k.split('.').map(Number); if (r === replica && st <= keepAfter) this.reports.delete(k); }
    for (const k of this.commits.keys()) { const [r, st] = k.split('.').map(Number); if (r === replica && st <= keepAfter) this.commits.delete(k); }
  }
}
