// What happened to a run, on one time axis, told from changes to its KV
// records: the run starting, finishing or failing; hosts lost; slots handed
// to standbys; coordinator restarts; audits that found a difference and the
// rewinds they caused (from the control log); each Bridge sync. Each event has a key, so a record seen twice (the history the
// watch replays, then the same revision again after a reconnect) is told
// once. The KV history is short (a few revisions a key): what a dashboard
// started late can tell is what the latest records still say, which for a
// lost host is when it was lost and which slot it held.
import type { RewindControl } from '../../schemas/control-messages.ts';
import type { BridgeRecord, HostEntry, RunState, SlotRecord } from '../../schemas/run-records.ts';

export type DashboardEventKind = 'run_started' | 'run_finished' | 'run_failed' | 'host_lost' | 'slot_reassigned' | 'coordinator_restart' | 'audit_failed' | 'rewind' | 'bridge_sync';

export interface DashboardEvent {
  /** Epoch ms. */
  readonly t: number;
  readonly kind: DashboardEventKind;
  readonly text: string;
  /** With a Bridge sync: when it began (its first contribution). */
  readonly from?: number;
}

export class DashboardEvents {
  private readonly byKey = new Map<string, DashboardEvent>();

  list(): DashboardEvent[] {
    return [...this.byKey.values()].sort((a, b) => a.t - b.t);
  }

  state(before: RunState | null, now: RunState, t: number): void {
    if (now.started_at) this.add('started', { t: now.started_at, kind: 'run_started', text: 'run started' });
    if (now.status === 'finished') this.add('finished', { t, kind: 'run_finished', text: `run finished after step ${now.step}` });
    if (now.status === 'failed') this.add('failed', { t, kind: 'run_failed', text: `run failed: ${now.reason ?? 'no reason recorded'}` });
    const restarts = now.recoveries?.coordinator_restarts ?? 0;
    // Restarts before the history this watch saw are counted, not timed: the first state read tells none.
    for (let k = (before?.recoveries?.coordinator_restarts ?? restarts) + 1; k <= restarts; k++) {
      this.add(`coordinator-restart:${k}`, { t, kind: 'coordinator_restart', text: `coordinator restarted (${k} so far): resumed from KV and the control log` });
    }
    for (const f of now.audits?.failed ?? []) {
      this.add(`audit:${f.replica}:${f.stage}:${f.step}`, { t, kind: 'audit_failed', text: `audit: slot ${f.replica}.${f.stage} computed step ${f.step} wrongly${f.host ? ` (host ${f.host})` : ''}: ${f.what}` });
    }
  }

  host(before: HostEntry | undefined, now: HostEntry, t: number): void {
    if (now.status !== 'lost' || before?.status === 'lost') return;
    const held = now.slot ? `, holding slot ${now.slot.replica}.${now.slot.stage}` : '';
    this.add(`lost:${now.host}`, { t, kind: 'host_lost', text: `host ${now.host} lost (no heartbeat)${held}` });
  }

  slot(before: SlotRecord | undefined, now: SlotRecord, t: number): void {
    // A slot's first holder (generation 1) was assigned, not handed over; a later generation replaced one.
    if (now.generation <= 1 || (before && before.generation >= now.generation)) return;
    this.add(`slot:${now.replica}:${now.stage}:${now.generation}`, {
      t, kind: 'slot_reassigned', text: `slot ${now.replica}.${now.stage} handed to ${now.host} (generation ${now.generation})${now.checkpoint ? `, from its checkpoint after step ${now.checkpoint.step}` : ', from the start'}`,
    });
  }

  rewind(replica: number, control: RewindControl, t: number): void {
    this.add(`rewind:${replica}:${control.epoch}`, {
      t, kind: 'rewind', text: `replica ${replica} rewound to step 0 (epoch ${control.epoch}): an audit caught slot ${replica}.${control.culprit.stage} at step ${control.culprit.step}; host ${control.culprit.host} banned`,
    });
  }

  bridge(record: BridgeRecord): void {
    this.add(`bridge:${record.stage}:${record.outer}`, {
      t: record.finished_ms, from: record.first_ms, kind: 'bridge_sync',
      text: `Bridge: stage ${record.stage} outer step ${record.outer} combined replicas ${record.replicas.join(', ')} in ${record.finished_ms - record.first_ms} ms`,
    });
  }

  private add(key: string, event: DashboardEvent): void {
    if (!this.byKey.has(key)) this.byKey.set(key, event);
  }
}
