// Every NATS name a run uses, in one place. One subject per pipeline edge and
// direction: activations into stage s of replica r travel on `act.r.s`,
// gradients into it on `grad.r.s`.

const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;

export function validateRunId(run: string): string {
  if (!RUN_ID.test(run)) throw new Error(`invalid run id '${run}': use 1-64 letters, digits, '-' or '_'`);
  return run;
}

export function runNames(run: string) {
  validateRunId(run);
  const p = `caravan.${run}`;
  return {
    run,
    act: (replica: number, stage: number) => `${p}.act.${replica}.${stage}`,
    grad: (replica: number, stage: number) => `${p}.grad.${replica}.${stage}`,
    dead: (replica: number, stage: number) => `${p}.dead.${replica}.${stage}`,
    heartbeat: (host: string) => `${p}.hb.${host}`,
    heartbeats: `${p}.hb.*`,
    register: `${p}.ctl.register`,
    assign: (host: string) => `${p}.ctl.assign.${host}`,
    ready: `${p}.ctl.ready`,
    step: (replica: number) => `${p}.ctl.step.${replica}`,  // coordinator → a replica's stages
    report: `${p}.ctl.report`,                               // stages → coordinator
    progress: `${p}.ctl.progress`,
    finish: `${p}.ctl.finish`,                               // coordinator → hosts: upload and exit
    uploaded: `${p}.ctl.uploaded`,
    finished: `${p}.ctl.finished`,                           // coordinator → clients: the summary
    failed: `${p}.ctl.failed`,
    edgeStream: `CARAVAN_${run}_EDGES`,
    deadStream: `CARAVAN_${run}_DEAD`,
    consumer: (kind: 'act' | 'grad', replica: number, stage: number) => `${kind}-${replica}-${stage}`,
    kvBucket: `caravan_${run}`,
    objectBucket: `caravan_${run}_obj`,
    finalState: (replica: number, begin: number, end: number) => `final/replica-${replica}/stage-${begin}-${end}.safetensors`,
  };
}

export type RunNames = ReturnType<typeof runNames>;
