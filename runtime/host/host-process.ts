// `caravan host`: one OS process per GPU node. It registers with the
// coordinator, heartbeats on core NATS from a thread of its own
// (heartbeat-thread.ts), and watches the run's KV bucket: a
// slot record naming it makes it run that (replica, stage) slot; until then it
// is a standby. A later slot record naming another host for its slot means it
// was replaced (it went quiet for too long): it stops at once and exits with
// a line saying so. One naming it under a new generation with `rewound` (an
// audit caught another slot's holder) means its replica starts over: it
// drops its stage and starts the slot again from that record. It leaves
// when the run's state says finished or failed. A run re-split live
// (`resplit`) goes on as another run: the host registers there, anew.
//
// Its identity is an nkey: the one `--nkey` names (which also authenticates
// it to NATS), or a fresh one. It proves it holds the key when it registers;
// the coordinator binds the slot it gives the host to that key, and every
// frame and report the host publishes is signed with it.
import { hostname } from 'node:os';
import { errorFrames, type Logger } from '../log.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeRegistrationReply, decodeRunFailure } from '../../schemas/control-messages.ts';
import type { HostDevice } from '../compute/compute-stage.ts';
import { connectToRunAsHost, type RunConnection } from '../transport/run-connection.ts';
import { HeartbeatThread } from './heartbeat-thread.ts';
import type { OnRefused } from '../transport/survivable-callback.ts';
import type { RunResources } from '../transport/run-resources.ts';
import { readRunConfig, watchRunState } from '../transport/run-state.ts';
import { newHostKey, readHostKey, type HostKey } from '../security/host-key.ts';
import { registrationProof } from '../security/registration.ts';
import { CoordinatorKeys } from '../security/coordinator-keys.ts';
import { SlotSigners } from '../security/slot-signers.ts';
import { readSlot, SlotLostError, SlotRewoundError, type SlotEntry } from '../transport/slots.ts';
import { FaultPoints } from './fault-points.ts';
import { measureTrainingSpeed, type MeasuredSpeed } from './speed-probe.ts';
import { startStage, type StageRunner } from './stage-runner.ts';
import { cudaDevice, type CudaDeviceInfo } from '../../native/index.ts';
import { initTracing, type Tracing } from '../telemetry/tracing.ts';

export interface HostOptions {
  readonly nats: string;
  readonly run: string;
  readonly device: 'cpu' | 'cuda';
  readonly gpu: number;
  readonly datacenter: string;
  readonly log: Logger;
  readonly heartbeatMs?: number;
  readonly registerTimeoutMs?: number;
  /** An nkey seed file (`caravan creds`): the host's NATS user and signing key. A fresh key when absent. */
  readonly nkey?: string;
  /** The host's id (default hostId()): each of several hosts sharing one process needs its own. */
  readonly id?: string;
  /** A training speed (TFLOP/s) to report instead of measuring one. */
  readonly speed?: number;
}

/** Exit status of a host that was replaced: not a crash, and not a success either. */
export const REPLACED_EXIT_CODE = 3;
/** How long a holder that reported its failure waits for the coordinator to announce the run failed, before it exits. */
const FAILURE_HEARD_MS = 10_000;

/** This machine and process; with `k`, the k-th of several hosts sharing the process (caravan host --count). */
export function hostId(k?: number): string {
  const suffix = k === undefined ? '' : `-h${k}`;
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 60 - suffix.length) + suffix;
}

export async function runHost(o: HostOptions): Promise<void> {
  for (let run: string | undefined = o.run; run !== undefined;) run = await hostRun({ ...o, run });
}

/** One run, from registering to its end; resolves to the run it goes on as (a re-split), if any. */
async function hostRun(o: HostOptions): Promise<string | undefined> {
  // A GPU the engine cannot use is refused before the host joins the run, so the coordinator never hands it a slot.
  let gpu: CudaDeviceInfo | undefined;
  if (o.device === 'cuda') {
    try {
      gpu = cudaDevice(o.gpu);
    } catch (err) {
      throw new Error(`--device cuda --gpu ${o.gpu}: ${(err as Error).message}`);
    }
  }
  const key = o.nkey ? await readHostKey(o.nkey) : newHostKey();
  const id = o.id ?? hostId();
  const conn = await connectToRunAsHost(o.nats, `caravan-host-${id}`, o.run, o.nkey ? key : undefined);
  const log = o.log.child({ run: o.run, host: id, datacenter: o.datacenter });
  if (gpu) log.info({ gpu: gpu.index, name: gpu.name, memory_gib: +(gpu.totalBytes / 2 ** 30).toFixed(1), free_gib: +(gpu.freeBytes / 2 ** 30).toFixed(1), compute_capability: gpu.computeCapability }, 'using GPU');
  const device: HostDevice = gpu ? { kind: 'cuda', gpu } : { kind: 'cpu' };
  const deadLetters = { count: 0 };
  const tracing = initTracing({ service: 'caravan-host', host: id, datacenter: o.datacenter });
  let heartbeats: HeartbeatThread | undefined;
  let faults: FaultPoints | undefined;
  try {
    // Hosts do not create a run's streams (their permissions do not allow it): they wait for the coordinator to.
    const res = await waitForRun(conn, o);
    faults = new FaultPoints(conn, id, res.names.chaos(id), res.names.chaosReached, refused(log));
    heartbeats = await HeartbeatThread.start({
      url: o.nats, run: o.run, name: `caravan-host-${id}-heartbeat`, subject: res.names.heartbeat(id, key.publicKey), host: id, datacenter: o.datacenter,
      periodMs: o.heartbeatMs ?? 1000, credentials: o.nkey ? { seed: key.seed, publicKey: key.publicKey } : undefined, deadLetters,
    });
    await register(conn, res, id, o, device, key, log);
    const successor = await followRun(conn, res, id, device, log, faults, deadLetters, tracing, key);
    if (successor) log.info({ successor }, 'the run was re-split: it goes on as another run, which this host joins');
    return successor;
  } finally {
    await heartbeats?.stop();
    faults?.close();
    await tracing.shutdown().catch((err: Error) => log.warn({ err: err.message }, 'trace export failed'));
    await conn.close();
  }
}

/** Watches the run's state and slots until the run ends or this host loses its slot; resolves to the run's successor, if re-split. */
async function followRun(conn: RunConnection, res: RunResources, id: string, device: HostDevice, log: Logger, faults: FaultPoints, deadLetters: { count: number }, tracing: Tracing, key: HostKey): Promise<string | undefined> {
  const watch = await watchRunState(res);
  const signers = new SlotSigners(res.kv);
  const coordinatorKeys = new CoordinatorKeys(res.kv);
  let stage: StageRunner | undefined;
  let held: SlotEntry | undefined;
  let ending: Promise<void> | undefined;
  let successor: string | undefined;
  // The watch and the stage both end the host: whichever comes first.
  let failed: Error | undefined;
  // Settles once the run is known to have ended (the coordinator's announcement, or the run state).
  let runEnded!: () => void;
  const ended = new Promise<void>((resolve) => { runEnded = resolve; });
  const failedRun = conn.subscribe(res.names.failed, (m) => {
    runEnded();
    failed ??= new Error(`the run failed: ${decodeRunFailure(m.data).reason}`);
    stage?.stop(failed);
    watch.stop();
  }, refused(log));
  const begin = async (entry: SlotEntry) => {
    const { record } = entry;
    held = entry;
    const slotLog = log.child({ replica: record.replica, stage: record.stage, generation: record.generation });
    slotLog.info({ from: record.checkpoint?.step ?? null, ...(record.rewound && !record.checkpoint ? { rewound_epoch: record.rewound.epoch } : {}) }, 'slot assigned');
    const config = await readRunConfig(res);
    stage = await startStage({ conn, res, config, slot: entry, host: id, device, log: slotLog, faults, deadLetters, tracing, key, signers, coordinatorKeys });
    conn.publish(res.names.ready, encodeJson({ host: id, replica: record.replica, stage: record.stage }));
    const runner = stage;
    ending = stage.done.then(() => watch.stop(), async (err: Error) => {
      // Rewound (an audit's catch): this host keeps the slot, and starts it again from the record that says so.
      if (err instanceof SlotRewoundError) { slotLog.warn({ epoch: err.epoch }, 'replica rewound: this slot\'s state is void; waiting for its new record'); return; }
      // Cut off from NATS past the heartbeat timeout, a holder meets timeouts before it hears it was replaced: an error
      // met by a replaced holder is its replacement's business, not the run's.
      if (!(err instanceof SlotLostError)) err = (await replacedSince(res, entry, id)) ?? err;
      // A stage that cannot go on fails the run (a replacement would meet the same error): it says so in a
      // report signed as the slot's holder, which the coordinator heeds only from the holder. A host that
      // lost its slot says nothing. The report is stored before this host goes on to exit.
      const first = !failed && !(err instanceof SlotLostError);
      failed ??= err;
      if (first) {
        // Where the error was made, when the driver asks for it (a chaos run's JSON line carries the report).
        const where = process.env.CARAVAN_ERROR_FRAMES === '1' ? errorFrames(err) : '';
        await runner.reportFailure(`replica ${record.replica} stage ${record.stage} (host ${id}): ${err.message}${where}`)
          .catch((e: Error) => slotLog.warn({ err: e.message }, 'the failure report was not stored'));
        // Whoever started this host hears its exit at once, the coordinator the report through its control log:
        // wait (bounded) for the coordinator to fail the run, so that the run's failure carries the reason.
        await Promise.race([ended, new Promise<void>((resolve) => setTimeout(resolve, FAILURE_HEARD_MS).unref())]);
      }
      watch.stop();
    });
  };
  try {
    for await (const e of watch) {
      if (e.type === 'status') {
        if (e.status === 'finished' || e.status === 'failed') runEnded();
        if (e.status === 'finished') { stage?.stop(); break; }
        // Re-split: this run's final states are stored (the coordinator read them before saying so); the next run trains on.
        if (e.status === 'resplit' && e.successor) { runEnded(); successor = e.successor; stage?.stop(); break; }
        if (e.status === 'failed') { failed ??= new Error('the run failed'); stage?.stop(failed); break; }
        continue;
      }
      const { record } = e.entry;
      signers.update(record);
      if (held && record.replica === held.record.replica && record.stage === held.record.stage && record.generation !== held.record.generation) {
        if (record.host === id && record.rewound && record.generation > held.record.generation) {
          // Still this host's, rewound: the old stage stops (if the control log did not stop it first), a new one starts.
          stage?.stop(new SlotRewoundError(record.replica, record.rewound.epoch));
          await ending;
          if (failed) break;
          await begin(e.entry);
          continue;
        }
        const lost = new SlotLostError(held.record.replica, held.record.stage, id, record);
        stage?.stop(lost);
        failed ??= lost;
        break;
      }
      if (held || record.host !== id) continue;
      await begin(e.entry);
    }
    await ending;  // the stage's end, its error already kept in `failed`
  } finally {
    watch.stop();
    failedRun.unsubscribe();
  }
  if (failed && !(failed instanceof SlotLostError) && held) failed = (await replacedSince(res, held, id)) ?? failed;
  if (failed) throw failed;
  // The watch also ends when the connection is gone for good: that is no clean exit, or whoever
  // started this host would wait for a run it has left.
  if (successor) return successor;
  if (conn.isClosed()) throw new Error('the connection to NATS closed (the server is gone or out of reach): leaving the run');
  if (!held) log.info('the run ended while this host was a standby');
  return undefined;
}

/** Whether the slot `held` names is now another holder's: read once more, since the watch may not have said so yet. */
async function replacedSince(res: RunResources, held: SlotEntry, id: string): Promise<SlotLostError | undefined> {
  const { replica, stage, generation } = held.record;
  const now = await readSlot(res.kv, replica, stage).catch(() => undefined);  // still cut off: the error stands
  return now && now.record.generation !== generation && now.record.host !== id ? new SlotLostError(replica, stage, id, now.record) : undefined;
}

async function waitForRun(conn: RunConnection, o: HostOptions): Promise<RunResources> {
  const deadline = Date.now() + (o.registerTimeoutMs ?? 5 * 60_000);
  for (;;) {
    try {
      return await conn.openRun();
    } catch (err) {
      if (Date.now() > deadline || /permission/i.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function register(conn: RunConnection, res: RunResources, id: string, o: HostOptions, device: HostDevice, key: HostKey, log: Logger): Promise<void> {
  const deadline = Date.now() + (o.registerTimeoutMs ?? 5 * 60_000);
  const speed = o.speed !== undefined ? { tflops: o.speed } : await measuredSpeed(res, device, log);
  const body = {
    host: id, datacenter: o.datacenter, device: device.kind, ...(device.kind === 'cuda' ? { gpu: device.gpu.name } : {}),
    key: key.publicKey, proof: registrationProof(key, o.run, id), ...(speed ? { tflops: speed.tflops } : {}),
  };
  let waiting = false;
  for (;;) {
    try {
      const reply = decodeRegistrationReply(await conn.request(res.names.register, encodeJson(body), 2000));
      if (!reply.ok && (!reply.retry || Date.now() > deadline)) throw new RegistrationRefused(`the coordinator refused this host: ${reply.reason ?? 'no reason given'}`);
      if (!reply.ok) {
        // Its key is another host id's that is still live (this process's previous life, until its heartbeats time
        // out), or the coordinator could not read the host records just now.
        if (!waiting) log.warn({ reason: reply.reason }, 'registration refused for now: asking again');
        waiting = true;
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      log.info({ key: key.publicKey }, 'registered with the coordinator');
      return;
    } catch (err) {
      if (err instanceof RegistrationRefused || Date.now() > deadline) throw err instanceof RegistrationRefused ? err : new Error(`no coordinator answered on ${res.names.register}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

class RegistrationRefused extends Error {}

/** The host's training speed for the run's model, when the run's config is there to say what to measure (speed-probe.ts). */
async function measuredSpeed(res: RunResources, device: HostDevice, log: Logger): Promise<MeasuredSpeed | undefined> {
  const config = await readRunConfig(res).catch(() => undefined);  // no coordinator has started the run yet
  if (!config) return undefined;
  try {
    const speed = measureTrainingSpeed(config, device);
    if (speed) log.info({ tflops: Number(speed.tflops.toPrecision(4)), ms: Number(speed.ms.toFixed(1)) }, 'measured training speed for the run\'s model');
    return speed;
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'could not measure training speed; registering without it');
    return undefined;
  }
}

/** A core-NATS message this host could not take (junk on a subject others may publish to): logged, and the host reads on. */
function refused(log: Logger): OnRefused {
  return (subject, err) => log.warn({ subject, err: err.message }, 'message refused');
}
