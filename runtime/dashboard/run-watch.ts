// What `caravan dashboard` shows, kept up to date from NATS as an observer:
// one watch of the run's KV bucket from its oldest kept revision (state,
// slots, hosts, Bridge syncs, summary: the history that is left and then
// every change as it happens) and one ordered consumer of the control log's
// step control from its first message (each committed step's loss and
// gradient norm, signed by the coordinator). Nothing is written anywhere: the
// run cannot tell it is watched. When the run does not exist yet, or NATS
// goes away, the snapshot says so and the watch starts over.
import type { JsMsg } from '@nats-io/jetstream';
import type { KvEntry } from '@nats-io/kv';
import { decodeStepControl } from '../../schemas/control-messages.ts';
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { decodeBridgeRecord, decodeHostEntry, decodeRunState, decodeRunSummary, type HostEntry, type RunState, type RunSummary, type SlotRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import { CoordinatorKeys } from '../security/coordinator-keys.ts';
import { SIGNATURE_HEADER } from '../security/message-signature.ts';
import { connectToRun, type NatsConnection } from '../transport/connect.ts';
import { openExistingRun, type RunResources } from '../transport/run-resources.ts';
import { decodeSlot } from '../transport/slots.ts';
import { DashboardEvents, type DashboardEvent } from './dashboard-events.ts';
import { Validation, type ValidationPoint } from './validation.ts';

export interface LossPoint {
  readonly replica: number;
  readonly step: number;
  readonly loss: number | null;
  readonly grad_norm: number | null;
  readonly skipped: boolean;
  /** Epoch ms the coordinator wrote the commit. */
  readonly t: number;
}

/** Replica 0's live figures as of one step (the run state's `metrics`). */
export interface MetricsPoint {
  readonly step: number;
  readonly t: number;
  readonly tokens_per_s: number;
  readonly mfu_pct: number;
  readonly bubble: number;
  readonly bubble_bound: number;
  readonly utilization_by_stage: number[];
}

export interface SlotRow {
  readonly replica: number;
  readonly stage: number;
  readonly host: string;
  readonly generation: number;
  readonly datacenter: string | null;
  readonly checkpoint_step: number | null;
  /** holding: its host is alive; vacant: its host was lost and no standby has taken it yet. */
  readonly status: 'holding' | 'vacant';
}

export interface DashboardSnapshot {
  readonly run: string;
  readonly now: number;
  /** NATS as this dashboard sees it: reachable or not, since when, and the last error. */
  readonly nats: { readonly url: string; readonly connected: boolean; readonly since: number; readonly error: string | null };
  /** Whether the run exists on that server; false: waiting for it to be created. */
  readonly known: boolean;
  readonly config: { readonly stages: number; readonly replicas: number; readonly steps: number; readonly microbatches: number; readonly schedule: string; readonly layers: number } | null;
  readonly state: RunState | null;
  readonly summary: RunSummary | null;
  readonly losses: LossPoint[];
  readonly validation: { readonly batches: number; readonly points: ValidationPoint[]; readonly error: string | null };
  readonly metrics: MetricsPoint[];
  readonly slots: SlotRow[];
  readonly hosts: Array<Omit<HostEntry, 'key'>>;
  readonly events: DashboardEvent[];
  /** Whether `--trace-file` was given: the page then shows the timeline of recent steps. */
  readonly timeline: boolean;
}

export interface RunWatchOptions {
  readonly nats: string;
  readonly run: string;
  readonly nkey?: string;
  readonly log: Logger;
  /** Validation batches per evaluated checkpoint; 0: none. */
  readonly validateBatches: number;
  readonly timeline: boolean;
  /** How long to wait before trying again when the run is unknown or NATS is gone. */
  readonly retryMs?: number;
}

export class RunWatch {
  private nc: NatsConnection | undefined;
  private stopped = false;
  private known = false;
  private connected = false;
  private since = Date.now();
  private error: string | null = null;
  private config: RunConfig | undefined;
  private state: RunState | null = null;
  private summary: RunSummary | null = null;
  private readonly losses = new Map<string, LossPoint>();      // `${replica}.${step}`
  private readonly metrics = new Map<number, MetricsPoint>();  // by step
  private readonly slots = new Map<string, SlotRecord>();      // `${replica}.${stage}`
  private readonly hosts = new Map<string, HostEntry>();
  private readonly events = new DashboardEvents();
  private validation: Validation | undefined;
  private loop: Promise<void> = Promise.resolve();

  constructor(private readonly o: RunWatchOptions) {}

  start(): void {
    this.loop = this.follow();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.nc?.close().catch(() => {});
    await this.loop;
    await this.validation?.settled();
  }

  snapshot(): DashboardSnapshot {
    const t = this.config?.training;
    return {
      run: this.o.run,
      now: Date.now(),
      nats: { url: this.o.nats, connected: this.connected, since: this.since, error: this.error },
      known: this.known,
      config: t ? { stages: t.stages, replicas: t.replicas, steps: t.steps, microbatches: t.microbatches, schedule: t.schedule ?? '1f1b', layers: this.config!.model.nLayers } : null,
      state: this.state,
      summary: this.summary,
      losses: [...this.losses.values()].sort((a, b) => a.replica - b.replica || a.step - b.step),
      validation: { batches: this.o.validateBatches, points: this.validation?.points() ?? [], error: this.validation?.error ?? null },
      metrics: [...this.metrics.values()].sort((a, b) => a.step - b.step),
      slots: [...this.slots.values()].sort((a, b) => a.replica - b.replica || a.stage - b.stage).map((s) => this.slotRow(s)),
      hosts: [...this.hosts.values()].map(({ key: _key, ...h }) => h),
      events: this.events.list(),
      timeline: this.o.timeline,
    };
  }

  /** Connects, reads the run until the connection ends, and starts over while not stopped. */
  private async follow(): Promise<void> {
    const retryMs = this.o.retryMs ?? 2000;
    while (!this.stopped) {
      try {
        await this.followOnce();
      } catch (err) {
        if (this.stopped) break;
        this.setConnected(false, (err as Error).message);
        this.o.log.warn({ err: (err as Error).message }, 'dashboard: run not readable; trying again');
      }
      if (!this.stopped) await new Promise((r) => setTimeout(r, retryMs));
    }
  }

  private async followOnce(): Promise<void> {
    const nc = await connectToRun(this.o.nats, `caravan-dashboard-${this.o.run}`, this.o.run, this.o.nkey, { reconnectForever: true });
    this.nc = nc;
    if (this.stopped) { await nc.close(); return; }
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === 'disconnect') this.setConnected(false, `disconnected from ${this.o.nats}`);
        else if (s.type === 'reconnect') this.setConnected(true, null);
      }
    })();
    try {
      const res = await openExistingRun(nc, this.o.run, this.o.nats).catch((err: Error) => {
        this.known = false;
        throw err;
      });
      this.known = true;
      this.setConnected(true, null);
      this.validation ??= new Validation({ batches: this.o.validateBatches, log: this.o.log });
      await Promise.all([this.watchKv(res), this.readSteps(res)]);
    } finally {
      await nc.close().catch(() => {});
    }
  }

  private setConnected(connected: boolean, error: string | null): void {
    if (connected !== this.connected) this.since = Date.now();
    this.connected = connected;
    this.error = error;
  }

  private async watchKv(res: RunResources): Promise<void> {
    const watch = await res.kv.watch({ include: 'history' });
    for await (const e of watch) {
      if (this.stopped) break;
      try {
        this.kvEntry(e, res);
      } catch (err) {
        this.o.log.warn({ key: e.key, err: (err as Error).message }, 'dashboard: a KV record did not decode; left out');
      }
    }
  }

  private kvEntry(e: KvEntry, res: RunResources): void {
    if (e.operation !== 'PUT' || e.value.length === 0) return;
    const t = e.created.getTime();
    const key = e.key;
    if (key === 'config') {
      this.config = decodeRunConfig(e.value, 'run config');
    } else if (key === 'state') {
      const state = decodeRunState(e.value, 'run state');
      this.events.state(this.state, state, t);
      this.state = state;
      const m = state.metrics;
      if (m) this.metrics.set(m.step, { step: m.step, t, tokens_per_s: m.tokens_per_s, mfu_pct: m.mfu_pct, bubble: m.bubble, bubble_bound: m.bubble_bound, utilization_by_stage: m.utilization_by_stage });
    } else if (key === 'summary') {
      this.summary = decodeRunSummary(e.value, 'run summary');
      if (this.config) this.validation?.finalStates(res, this.config, this.summary, t);
    } else if (key.startsWith('slot.')) {
      const slot = decodeSlot(e.value, key);
      const before = this.slots.get(`${slot.replica}.${slot.stage}`);
      this.events.slot(before, slot, t);
      this.slots.set(`${slot.replica}.${slot.stage}`, slot);
      if (this.config) this.validation?.checkpoints(res, this.config, [...this.slots.values()], t);
    } else if (key.startsWith('hosts.')) {
      const host = decodeHostEntry(e.value, key);
      this.events.host(this.hosts.get(host.host), host, t);
      this.hosts.set(host.host, host);
    } else if (/^bridge\.\d+\.\d+$/.test(key)) {
      this.events.bridge(decodeBridgeRecord(e.value, key));
    }
  }

  /** Every replica's step control from the log's start: its commits are the loss curves. Only the coordinator's signed entries count. */
  private async readSteps(res: RunResources): Promise<void> {
    const keys = new CoordinatorKeys(res.kv);
    // One filter subject, named in the consumer's create subject, where an observer's permissions can check it.
    const consumer = await res.js.consumers.get(res.names.controlStream, { filter_subjects: res.names.stepControls });
    const messages = await consumer.consume();
    for await (const m of messages) {
      if (this.stopped) break;
      await this.stepControl(m, res, keys);
    }
  }

  private async stepControl(m: JsMsg, res: RunResources, keys: CoordinatorKeys): Promise<void> {
    const replica = res.names.stepControlReplica(m.subject);
    const verdict = await keys.check({ subject: m.subject, body: m.data, header: m.headers?.get(SIGNATURE_HEADER), expected: res.names.stepControl(replica) });
    if (!verdict.ok) {
      this.o.log.warn({ subject: m.subject, seq: m.seq, reason: verdict.reason }, 'dashboard: step control not signed by the coordinator; left out');
      return;
    }
    try {
      const control = decodeStepControl(m.data, `step control ${m.subject}`);
      if (control.type !== 'commit') return;
      this.losses.set(`${replica}.${control.step}`, {
        replica, step: control.step, loss: control.loss, grad_norm: control.gradNorm, skipped: control.skip === true, t: Math.round(m.info.timestampNanos / 1e6),
      });
    } catch (err) {
      this.o.log.warn({ subject: m.subject, seq: m.seq, err: (err as Error).message }, 'dashboard: step control did not decode; left out');
    }
  }

  private slotRow(s: SlotRecord): SlotRow {
    const host = this.hosts.get(s.host);
    return {
      replica: s.replica, stage: s.stage, host: s.host, generation: s.generation,
      datacenter: host?.datacenter || null,
      checkpoint_step: s.checkpoint?.step ?? null,
      status: host?.status === 'lost' ? 'vacant' : 'holding',
    };
  }
}
