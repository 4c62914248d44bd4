// Faults during `caravan simulate`: churn (stage hosts SIGKILLed, one after
// each of the first `kills` steps of replica 0, each slot taken over by a
// standby) and a partition (one datacenter's links cut for a while after
// the first step). It records when each struck and how long replica 0 then
// stood still: the time to its next committed step.
import type { Logger } from '../log.ts';
import { connectNats, type NatsConnection } from '../transport/connect.ts';
import type { Progress } from '../train/train-distributed.ts';
import { openExistingRun } from '../transport/run-resources.ts';
import { RunStateReader } from '../transport/run-state-reader.ts';
import type { WanNetwork } from '../wan/wan-network.ts';

export interface SimulateFaults {
  /** Stage hosts to kill, one after each of the first `kills` steps of replica 0. */
  readonly kills: number;
  /** Cut every link from and to this datacenter for this long, after the first step (needs a WAN). */
  readonly partition?: { readonly datacenter: string; readonly seconds: number };
}

export interface FaultRecord {
  readonly fault: 'kill' | 'partition';
  readonly detail: string;
  readonly after_step: number;
  /** From the fault to replica 0's next committed step. */
  readonly stall_s: number | null;
}

/** Which slot the k-th kill strikes: replicas in turn, stages spread over the pipeline (never the same twice in a row). */
export function killTarget(k: number, stages: number, replicas: number): { replica: number; stage: number } {
  return { replica: k % replicas, stage: (1 + k * Math.ceil(stages / 2 + 1)) % stages };
}

export class FaultInjector {
  private runState: RunStateReader | undefined;
  private nc: NatsConnection | undefined;
  private readonly records: Array<{ fault: FaultRecord['fault']; detail: string; after_step: number; at: number; stall_s: number | null }> = [];
  private killed = 0;
  private partitioned = false;
  private timers: NodeJS.Timeout[] = [];

  /** A partition needs `wan` (simulate checks that before it builds anything). */
  constructor(private readonly o: { faults: SimulateFaults; stages: number; replicas: number; wan?: WanNetwork; log: Logger }) {}

  get active(): boolean {
    return this.o.faults.kills > 0 || this.o.faults.partition !== undefined;
  }

  /** Once the run's resources exist: where to find slot holders. */
  async attach(url: string, run: string): Promise<void> {
    if (!this.active) return;
    this.nc = await connectNats(url, 'simulate-faults');
    this.runState = new RunStateReader(await openExistingRun(this.nc, run, url));
  }

  /** A committed step: close the stalls that were open, then strike what is due. */
  onProgress(p: Progress): void {
    if (p.replica !== 0) return;
    const now = performance.now();
    for (const r of this.records) if (r.stall_s === null && r.after_step < p.step) r.stall_s = +((now - r.at) / 1000).toFixed(2);
    const step = p.step;
    if (this.killed < this.o.faults.kills && step >= this.killed) void this.kill(this.killed++, step);
    const partition = this.o.faults.partition;
    if (partition && !this.partitioned && this.o.wan) {
      this.partitioned = true;
      this.o.wan.set(partition.datacenter, { up: false });
      this.records.push({ fault: 'partition', detail: `${partition.datacenter} for ${partition.seconds} s`, after_step: step, at: now, stall_s: null });
      this.o.log.warn({ datacenter: partition.datacenter, seconds: partition.seconds }, 'datacenter partitioned');
      this.timers.push(setTimeout(() => {
        this.o.wan!.set(partition.datacenter, { up: true });
        this.o.log.warn({ datacenter: partition.datacenter }, 'partition healed');
      }, partition.seconds * 1000));
    }
  }

  private async kill(k: number, step: number): Promise<void> {
    const { replica, stage } = killTarget(k, this.o.stages, this.o.replicas);
    const holder = this.runState && (await this.runState.slot(replica, stage).catch(() => undefined))?.record.host;
    // Host ids end with the host process's pid (host-process.ts, hostId).
    const pid = Number(/-(\d+)$/.exec(holder ?? '')?.[1]);
    if (!holder || !Number.isSafeInteger(pid)) {
      this.o.log.warn({ replica, stage, holder }, 'no host process to kill for this slot');
      return;
    }
    try {
      process.kill(pid, 'SIGKILL');
    } catch (err) {
      this.o.log.warn({ replica, stage, holder, err: (err as Error).message }, 'kill failed');
      return;
    }
    this.records.push({ fault: 'kill', detail: `slot ${replica}.${stage} (host ${holder})`, after_step: step, at: performance.now(), stall_s: null });
    this.o.log.warn({ replica, stage, holder }, 'host killed');
  }

  report(): FaultRecord[] {
    return this.records.map(({ at: _at, ...r }) => r);
  }

  async stop(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    if (this.o.faults.partition && this.partitioned) this.o.wan?.set(this.o.faults.partition.datacenter, { up: true });
    await this.nc?.close().catch(() => {});
  }
}
