// The state a replica that joins a running run starts a stage from: the
// Bridge's parameters after outer step k, AdamW's moments at zero (DiLoCo's
// inner optimizer state is each replica's own; a newcomer has none), at
// optimizer step k·H, so its learning-rate schedule is the run's there. The
// coordinator stores it as the slot's starting checkpoint; the in-process
// reference (runtime/train/train-local-bridge.ts) loads the same bytes.
import { decodeSafeTensors, EngineStage, encodeSafeTensors } from '../../native/index.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import { decodeParams } from './bridge-payload.ts';

/** `theta`: the stage's parameters in model order, or the Bridge's fp32 payload of them (an outer step's result object). */
export function joiningState(config: RunConfig, stage: number, theta: Float32Array | { readonly payload: Uint8Array; readonly name: string }, step: number): Uint8Array {
  const { model, optim, training: t } = config;
  const [layerBegin, layerEnd] = stageRanges(config)[stage];
  // The run's thread count: OpenBLAS's is process-wide, and the reference computes in this process.
  const fresh = new EngineStage({ model, optim, layerBegin, layerEnd, seed: t.seed, threads: t.cpuThreads });
  const values = theta instanceof Float32Array ? theta : decodeParams(theta.payload, { length: fresh.paramCount, kind: 'fp32' }, theta.name).values;
  if (values.length !== fresh.paramCount) throw new Error(`stage ${stage}: the Bridge's parameters have ${values.length} values, the stage ${fresh.paramCount}`);
  fresh.setParams(values);
  const file = decodeSafeTensors(fresh.state(), `stage ${stage}'s joining state`);
  return encodeSafeTensors([...file.tensors.values()], { ...file.metadata, optimizer_step: String(step) });
}
