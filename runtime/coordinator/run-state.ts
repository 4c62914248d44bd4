// The `state` record as the coordinator keeps it while the run goes on: its
// status, step, loss and speed, the live metrics, and the recovery events
// counted over the run's life (a restarted coordinator continues the counts
// it finds). Saving is best effort: `caravan status` shows the last one that
// landed, and the next step saves again.
import type { RecoveryCounts, RunState } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { RunStateStore } from '../transport/run-state-store.ts';
import { NO_RECOVERIES } from './live-metrics.ts';

export class LiveRunState {
  readonly state: RunState;
  readonly recoveries: RecoveryCounts;
  private started = false;

  constructor(private readonly store: RunStateStore, prior: RunState | undefined, restarted: boolean, private readonly log: Logger) {
    this.state = prior ?? { status: 'gathering', step: 0, loss: null, tokens_per_s: null, started_at: null, updated: '' };
    this.recoveries = (this.state.recoveries = { ...NO_RECOVERIES, ...this.state.recoveries });
    if (restarted) this.recoveries.coordinator_restarts++;
  }

  /** The run is under way (again, after a restart: it keeps its first start time). False if this process had started it already. */
  start(): boolean {
    if (this.started) return false;
    this.started = true;
    if (this.state.started_at === null) this.state.started_at = Date.now();
    this.state.status = 'running';
    void this.save();
    return true;
  }

  save(): Promise<void> {
    return this.store.writeState({ ...this.state, updated: new Date().toISOString() }).catch((err: Error) => this.log.warn({ err: err.message }, 'state not saved'));
  }

  /** Since the run first started, across coordinator restarts. */
  elapsedSeconds(): number {
    return (Date.now() - (this.state.started_at ?? Date.now())) / 1000;
  }
}
