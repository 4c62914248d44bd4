// What `caravan dashboard` shows, kept up to date from NATS as an observer
// (runtime/transport/run-history.ts): the run's KV records from the oldest
// revision kept (state, slots, hosts, Bridge syncs, summary: the history that
// is left and then every change as it happens) and the control log's step
// control from its first message (each committed step's loss and gradient
// norm, signed by the coordinator; a rewind starts a replica's curve again). Nothing is written anywhere: the
// run cannot tell it is watched. When the run does not exist yet, or NATS
// goes away, the snapshot says so and the watch starts over.
import type { RunConfig } from '../../schemas/run-config.ts';
import type { HostEntry, RunState, RunSummary, SlotRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import { connectToRun, type NatsConnection } from '../transport/connect.ts';
import { runRecords, stepControls, type HistoryFeed, type RunRecord } from '../transport/run-history.ts';
import { openExistingRun, type RunResources } from '../transport/run-resources.ts';
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
  private readonly losses = new Map<string, LossPoint>();      // `${replica}/${step}`
  private readonly metrics = new Map<number, MetricsPoint>();  // by step
  private readonly slots = new Map<string, SlotRecord>();      // `${replica}/${stage}`
  private feeds: Array<HistoryFeed<unknown>> = [];
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
      for (const f of this.feeds) f.stop();
      this.feeds = [];
      await nc.close().catch(() => {});
    }
  }

  private setConnected(connected: boolean, error: string | null): void {
    if (connected !== this.connected) this.since = Date.now();
    this.connected = connected;
    this.error = error;
  }

  private async watchKv(res: RunResources): Promise<void> {
    const records = await runRecords(res, this.refused);
    this.feeds.push(records);
    for await (const r of records) {
      if (this.stopped) break;
      this.record(r, res);
    }
  }

  private record(r: RunRecord, res: RunResources): void {
    switch (r.kind) {
      case 'config':
        this.config = r.config;
        return;
      case 'state': {
        this.events.state(this.state, r.state, r.t);
        this.state = r.state;
        const m = r.state.metrics;
        if (m) this.metrics.set(m.step, { step: m.step, t: r.t, tokens_per_s: m.tokens_per_s, mfu_pct: m.mfu_pct, bubble: m.bubble, bubble_bound: m.bubble_bound, utilization_by_stage: m.utilization_by_stage });
        return;
      }
      case 'summary':
        this.summary = r.summary;
        if (this.config) this.validation?.finalStates(res, this.config, r.summary, r.t);
        return;
      case 'slot': {
        const key = `${r.slot.replica}/${r.slot.stage}`;
        this.events.slot(this.slots.get(key), r.slot, r.t);
        this.slots.set(key, r.slot);
        if (this.config) this.validation?.checkpoints(res, this.config, [...this.slots.values()], r.t);
        return;
      }
      case 'host':
        this.events.host(this.hosts.get(r.host.host), r.host, r.t);
        this.hosts.set(r.host.host, r.host);
        return;
      case 'bridge':
        this.events.bridge(r.bridge);
    }
  }

  /** Every replica's step control from the log's start: its commits are the loss curves; a rewind starts a replica's curve again. */
  private async readSteps(res: RunResources): Promise<void> {
    const steps = await stepControls(res, this.refused);
    this.feeds.push(steps);
    for await (const { replica, control, t } of steps) {
      if (this.stopped) break;
      if (control.type === 'rewind') {
        for (const k of this.losses.keys()) if (k.startsWith(`${replica}/`)) this.losses.delete(k);
        this.events.rewind(replica, control, t);
      } else if (control.type === 'commit') {
        this.losses.set(`${replica}/${control.step}`, { replica, step: control.step, loss: control.loss, grad_norm: control.gradNorm, skipped: control.skip === true, t });
      }
    }
  }

  private readonly refused = (where: string, reason: string) => this.o.log.warn({ where, reason }, 'dashboard: left out what does not decode or is not signed');

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
