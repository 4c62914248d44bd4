// `caravan status`: a run's live state from its KV bucket and streams —
// hosts, slots (holder, generation, last checkpoint), step, loss,
// throughput, dead-lettered frames.
import { Command } from 'commander';
import { connectToRun } from '../transport/connect.ts';
import type { AuditSummary, HostEntry, LiveMetrics, PipelineUse, RecoveryCounts, RunState, RunSummary, SlotRecord } from '../../schemas/run-records.ts';
import type { DeadLetter } from '../transport/dead-letters.ts';
import { openExistingRun } from '../transport/run-resources.ts';
import { RunStateReader } from '../transport/run-state-reader.ts';
import { validateRunId } from '../transport/subjects.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { measuredSplit, type MeasuredSplit } from '../config/speed-split.ts';

export interface RunStatus {
  readonly run: string;
  readonly state: RunState | null;
  readonly hosts: HostEntry[];
  readonly slots: SlotRecord[];
  readonly dead_letters: { count: number; recent: DeadLetter[] };
  readonly summary: RunSummary | null;
  /** With a Bridge: each stage's last stored sync (outer step, replicas, span in ms). */
  readonly bridge: Array<{ stage: number; outer: number; replicas: number[]; ms: number }>;
  /** Once every slot's holder measured its speed: the split those speeds call for, beside the run's. */
  readonly split?: MeasuredSplit;
}

function splitLine(m: MeasuredSplit | undefined): string[] {
  if (!m) return [];
  const same = m.by_speed.every((n, s) => n === m.layers[s]);
  const speeds = m.stage_tflops.map((v) => formatTflops(v)).join(', ');
  return [same
    ? `split ${m.layers.join(',')} layers suits the holders' measured speeds (${speeds} by stage)`
    : `split by the holders' measured speeds (${speeds} by stage): ${m.by_speed.join(',')} layers would make the slowest stage ${m.pace_gain.toFixed(2)}× faster than ${m.layers.join(',')} (re-split the running run: caravan repartition --live --stage-layers ${m.by_speed.join(',')})`];
}

export async function readRunStatus(url: string, run: string, nkey?: string): Promise<RunStatus> {
  const nc = await connectToRun(url, `caravan-status-${run}`, run, nkey);
  try {
    const reader = new RunStateReader(await openExistingRun(nc, run, url));
    const bridge = (await reader.bridgeSyncs()).map(({ stage, outer, record }) => ({ stage, outer, replicas: record.replicas, ms: record.finished_ms - record.first_ms }));
    const [config, hosts, slots] = [await reader.config(), await reader.hosts(), await reader.slots()];
    const split = config ? measuredSplit(config, hosts, slots) : undefined;
    return {
      run,
      state: (await reader.state()) ?? null,
      hosts,
      slots,
      dead_letters: await reader.deadLetters(20),
      summary: (await reader.summary()) ?? null,
      bridge,
      ...(split ? { split } : {}),
    };
  } finally {
    await nc.close();
  }
}

/** How replica 0's stages used their time and the machines' peak: live (state.metrics), or the whole run once it finished (summary). */
function computeLine(m: (PipelineUse & { mfu_pct: number; devices_by_stage: string[] }) | undefined, when: string): string[] {
  const u = m?.utilization_by_stage;
  if (!m || !u?.length) return [];
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const stash = m.peak_stash_bytes_by_stage?.length ? `peak activation stash by stage ${m.peak_stash_bytes_by_stage.map((n) => `${mb(n)} MB`).join(' ')}; ` : '';
  return [`stages busy (replica 0, ${when}): ${u.map(pct).join(' ')}; bubble ${pct(m.bubble)} (${m.schedule ?? '1f1b'} bound ${pct(m.bubble_bound)}); ${stash}MFU ${m.mfu_pct.toFixed(1)}% of the hosts' peak (${peakKind(m.devices_by_stage)})`];
}

const mb = (n: number) => (n / 1e6).toFixed(2);

/** Frames between stages, once the run has finished: their fp32 size and their size on the wire. */
function wireLine(summary: RunSummary): string[] {
  const wire = summary.wire;
  if (!wire || !wire.frames) return [];
  return [`frames between stages: ${wire.frames}, ${mb(wire.f32_bytes)} MB as fp32, ${mb(wire.wire_bytes)} MB on the wire (${(wire.f32_bytes / wire.wire_bytes).toFixed(1)}×)`];
}

/** While the run goes on: bytes across each boundary of replica 0, and frames waiting at each stage. */
function liveLines(m: LiveMetrics | undefined): string[] {
  if (!m) return [];
  const edges = m.edges ?? [];
  const queued = m.queued_by_stage ?? [];
  return [
    ...edges.map((e) => `  edge ${e.edge}: activations ${e.act.frames} frames ${mb(e.act.wire_bytes)} MB, gradients ${e.grad.frames} frames ${mb(e.grad.wire_bytes)} MB on the wire`),
    ...(queued.length ? [`  frames waiting by stage: ${queued.join(' ')}`] : []),
  ];
}

/** The Bridge: the outer step every stage has reached, and each stage's last sync (first contribution to stored result). */
function bridgeLine(b: RunStatus['bridge']): string[] {
  if (!b.length) return [];
  return [`bridge: outer step ${Math.min(...b.map((x) => x.outer))}; last sync by stage: ${b.map((x) => `${x.ms} ms (outer ${x.outer}, replicas ${x.replicas.join(',')})`).join('; ')}`];
}

/** Replicas that joined after the start (training.bridge.startReplicas) and that left before the end: membership over time. */
function membershipLines(st: Partial<RunState>): string[] {
  const when = (at: number) => new Date(at).toISOString();
  return [
    ...(st.joined?.length ? [`replicas joined mid-run: ${st.joined.map((j) => `replica ${j.replica} after outer step ${j.outer} (training from step ${j.step}, ${when(j.at)})`).join('; ')}`] : []),
    ...(st.left?.length ? [`replicas that left: ${st.left.map((l) => `replica ${l.replica} after outer step ${l.outer} (its last step ${l.step}, ${l.vacant ? `retired: its stage ${l.vacant.stage} slot stayed vacant, ` : ''}${when(l.at)})`).join('; ')}`] : []),
  ];
}

/** A live re-split of this run: decided (it ends before the step), under way (its successor trains), or done. */
function resplitLine(st: Partial<RunState>): string[] {
  const r = st.resplit;
  if (!r) return [];
  const how = st.status === 'resplit' ? 'going on as' : st.status === 'finished' || st.status === 'failed' ? 'went on as' : 'decided; it goes on as';
  return [`re-split: ${r.from_stage_layers.join('/')} → ${r.stage_layers.join('/')} layers from step ${r.step}, ${how} run ${r.run} (caravan status --run ${r.run})`];
}

/** Audits by exact replay (training.audit): intervals passed and skipped, replay time, and the difference that failed the run. */
function auditLines(a: AuditSummary | undefined): string[] {
  if (!a) return [];
  return [
    `audits (rate ${a.rate}): ${a.audited} intervals passed (${a.steps_replayed} slot-steps replayed in ${(a.replay_ms / 1000).toFixed(1)} s), ${a.skipped} skipped, ${a.failed.length} failed`,
    ...a.failed.map((f) => `  slot ${f.replica}.${f.stage} step ${f.step}${f.host ? ` (host ${f.host})` : ''}: ${f.what}`),
  ];
}

function recoveryLine(r: RecoveryCounts | undefined, replays: RunState['replays']): string[] {
  if (!r) return [];
  const last = replays?.at(-1);
  const replayed = last ? `; the last restart replayed ${last.entries} of the control log's ${last.log_seq} entries${last.snapshot_seq !== null ? ` (from its snapshot at ${last.snapshot_seq})` : ''}` : '';
  return [`recovery: ${r.hosts_lost} hosts lost, ${r.slots_reassigned} slots handed to standbys, ${r.coordinator_restarts} coordinator restarts${replayed}`];
}

/** A slot whose holder was lost with no standby to take over: the run waits for a host to join. */
function vacant(s: { readonly hosts: HostEntry[] }, slot: SlotRecord): boolean {
  return s.hosts.some((h) => h.host === slot.host && h.status === 'lost');
}

/** A measured training speed, to three significant figures: TFLOP/s, or GFLOP/s below one. */
function formatTflops(tflops: number): string {
  return tflops >= 1 ? `${tflops.toPrecision(3)} TFLOP/s` : `${(tflops * 1000).toPrecision(3)} GFLOP/s`;
}

/** `caravan status` as text: the run's state line, hosts, slots, then its figures (live while it runs, whole-run once it finished). */
export function formatStatus(s: RunStatus): string {
  const st: Partial<RunState> = s.state ?? {};
  return [
    `run ${s.run}: ${st.status ?? 'unknown'}, step ${st.step ?? '-'}, loss ${typeof st.loss === 'number' ? st.loss.toFixed(4) : '-'}, ${typeof st.tokens_per_s === 'number' ? Math.round(st.tokens_per_s) : '-'} tok/s${st.reason ? ` (${st.reason})` : ''}`,
    `hosts (${s.hosts.length}):`,
    ...s.hosts.map((h) => `  ${h.host}  ${h.status}${h.replica !== undefined ? `  replica ${h.replica} stage ${h.stage}` : ''}${h.datacenter ? `  ${h.datacenter}` : ''}${h.tflops !== undefined ? `  ${formatTflops(h.tflops)} measured` : ''}`),
    `slots (${s.slots.length}):`,
    ...s.slots.map((x) => `  replica ${x.replica} stage ${x.stage}  ${x.host}  generation ${x.generation}  checkpoint ${x.checkpoint ? `after step ${x.checkpoint.step}` : 'none'}${vacant(s, x) ? '  VACANT: its host was lost and no standby was left; the next host to join takes it' : ''}`),
    ...splitLine(s.split),
    ...(s.summary ? [...wireLine(s.summary), ...computeLine(s.summary, 'whole run')]
      : [...computeLine(st.metrics, `as of step ${st.metrics?.step}`), ...liveLines(st.metrics)]),
    ...bridgeLine(s.bridge),
    ...membershipLines(st),
    ...resplitLine(st),
    ...(s.summary?.resplits?.length ? [`re-splits on the way: ${s.summary.resplits.map((r) => `${r.from_run} → ${r.run} at step ${r.step} (${r.stage_layers.join('/')})`).join('; ')}`] : []),
    ...recoveryLine(st.recoveries, st.replays),
    ...auditLines(s.summary?.audits ?? st.audits),
    `dead-lettered frames: ${s.dead_letters.count}`,
    ...s.dead_letters.recent.map((d) => `  [${d.fault}] ${d.reason} (${d.subject}, host ${d.host}${d.writer ? `, key ${d.writer.slice(0, 12)}…` : ''})`),
  ].join('\n');
}

export function statusCommand(program: Command): void {
  program
    .command('status')
    .description("show a run's state: hosts and slots, step, loss, throughput, dead-lettered frames")
    .requiredOption('--nats <url>', 'NATS server or cluster')
    .requiredOption('--run <id>', 'run id')
    .option('--json', 'print the status as one JSON line')
    .option('--nkey <file>', 'authenticate as this nkey user (an observer seed from `caravan creds`)')
    .action(async (flags: { nats: string; run: string; json?: boolean; nkey?: string }) => {
      validateRunId(flags.run);
      const s = await readRunStatus(flags.nats, flags.run, flags.nkey);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(s)}\n`);
        return;
      }
      process.stdout.write(`${formatStatus(s)}\n`);
    });
}

/** What the MFU is measured against: GPUs' dense bf16 peaks, CPUs' measured fp32 sgemm, or both. */
function peakKind(devices: string[] | undefined): string {
  const gpus = [...new Set((devices ?? []).filter((d) => d !== 'cpu'))];
  const cpus = (devices ?? ['cpu']).includes('cpu');
  const parts = [...(gpus.length ? [`bf16 tensor-core peak of ${gpus.join(', ')}`] : []), ...(cpus ? ['measured fp32 sgemm of the CPU hosts'] : [])];
  return parts.join('; ');
}
