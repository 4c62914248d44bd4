// Every NATS name a run uses, in one place. One subject per pipeline edge and
// direction: activations into stage s of replica r travel on `act.r.s`,
// gradients into it on `grad.r.s`; both are kept in that slot's input stream,
// one stream per slot so that each can live next to the host that reads it
// (run-resources.ts places it in the holder's datacenter). Step control (`step.r`) and stage reports
// (`report.r.s`) are JetStream too: together they are the run's control log,
// which a restarted coordinator and a replacement stage replay.

const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;

export function validateRunId(run: string): string {
  if (!RUN_ID.test(run)) throw new Error(`invalid run id '${run}': use 1-64 letters, digits, '-' or '_'`);
  return run;
}

export type EdgeKind = 'act' | 'grad';

/** Where a run's peers get their replies (JetStream acks, KV reads): `_INBOX.<run>.<nuid>`. */
export function runInboxPrefix(run: string): string {
  return `_INBOX.${validateRunId(run)}`;
}

export function runNames(run: string) {
  validateRunId(run);
  const p = `caravan.${run}`;
  return {
    run,
    act: (replica: number, stage: number) => `${p}.act.${replica}.${stage}`,
    grad: (replica: number, stage: number) => `${p}.grad.${replica}.${stage}`,
    edge: (kind: EdgeKind, replica: number, stage: number) => `${p}.${kind}.${replica}.${stage}`,
    dead: (replica: number, stage: number) => `${p}.dead.${replica}.${stage}`,
    stepControl: (replica: number) => `${p}.step.${replica}`,                  // coordinator → a replica's stages (open, commit)
    report: (replica: number, stage: number) => `${p}.report.${replica}.${stage}`,  // stages → coordinator (done, stepped, final)
    heartbeat: (host: string) => `${p}.hb.${host}`,
    heartbeats: `${p}.hb.*`,
    register: `${p}.ctl.register`,
    ready: `${p}.ctl.ready`,
    progress: `${p}.ctl.progress`,
    finished: `${p}.ctl.finished`,                           // coordinator → clients: the summary
    failed: `${p}.ctl.failed`,
    chaos: (host: string) => `${p}.chaos.${host}`,           // fault injection, only where CARAVAN_CHAOS=1
    chaosReached: `${p}.chaos-reached`,
    /** The input stream of slot (replica, stage): its `act` and `grad` edges. */
    inputStream: (replica: number, stage: number) => `CARAVAN_${run}_IN_${replica}_${stage}`,
    controlStream: `CARAVAN_${run}_CTL`,
    deadStream: `CARAVAN_${run}_DEAD`,
    /** Each holder of a slot reads through its own consumer, so a replaced one cannot take or ack its inputs. */
    consumer: (kind: EdgeKind, replica: number, stage: number, generation: number) => `${kind}-${replica}-${stage}-g${generation}`,
    consumerPrefix: (kind: EdgeKind, replica: number, stage: number) => `${kind}-${replica}-${stage}-g`,
    controlConsumer: (replica: number, stage: number, generation: number) => `step-${replica}-${stage}-g${generation}`,
    controlConsumerPrefix: (replica: number, stage: number) => `step-${replica}-${stage}-g`,
    coordinatorConsumer: (nonce: string) => `coordinator-${nonce}`,
    coordinatorConsumerPrefix: 'coordinator-',
    /** Everything of the run, and the subjects its streams hold. */
    all: `${p}.>`,
    stepControls: `${p}.step.>`,
    reports: `${p}.report.>`,
    deadLetters: `${p}.dead.>`,
    isStepControl: (subject: string) => subject.startsWith(`${p}.step.`),
    isReport: (subject: string) => subject.startsWith(`${p}.report.`),
    /** The slot a report's subject names: `report.<replica>.<stage>`. */
    reportSlot: (subject: string) => { const [replica, stage] = subject.slice(`${p}.report.`.length).split('.').map(Number); return { replica, stage }; },
    /** The replica a step-control subject names: `step.<replica>`. */
    stepControlReplica: (subject: string) => Number(subject.slice(`${p}.step.`.length)),
    kvBucket: `caravan_${run}`,
    /** KV keys of run state, written by the coordinator alone. */
    configKey: 'config',
    stateKey: 'state',
    summaryKey: 'summary',
    hostKeys: 'hosts.>',
    slotKeys: 'slot.>',
    bridgeOuterKeys: 'bridge-outer.>',
    slotKey: (replica: number, stage: number) => `slot.${replica}.${stage}`,
    hostKey: (host: string) => `hosts.${host}`,
    objectBucket: `caravan_${run}_obj`,
    checkpoint: (replica: number, begin: number, end: number, step: number, generation: number) =>
      `ckpt/replica-${replica}/stage-${begin}-${end}/step-${step}-g${generation}.safetensors`,
    finalState: (replica: number, begin: number, end: number) => `final/replica-${replica}/stage-${begin}-${end}.safetensors`,
    /** The Bridge: a replica's contribution to outer step o of stage s, the result, and its KV record (created once). */
    bridgeContribution: (stage: number, outer: number, replica: number) => `bridge/stage-${stage}/outer-${outer}/replica-${replica}`,
    bridgeTheta: (stage: number, outer: number) => `bridge/stage-${stage}/outer-${outer}/theta`,
    /** A replica's error-feedback residual after outer step o (top-k payloads): what a replacement restores. */
    bridgeResidual: (stage: number, outer: number, replica: number) => `bridge/stage-${stage}/outer-${outer}/residual-${replica}`,
    bridgeMomentum: (stage: number, outer: number) => `bridge/stage-${stage}/outer-${outer}/momentum`,
    bridgeKey: (stage: number, outer: number) => `bridge.${stage}.${outer}`,
    /** A distributed variable, advanced by compare-and-set: the last outer step of stage s the Bridge completed. */
    bridgeOuterKey: (stage: number) => `bridge-outer.${stage}`,
  };
}

export type RunNames = ReturnType<typeof runNames>;
