// Stage checkpoints as safetensors files in a directory, one per stage, named
// by layer range. Written to a temporary name and renamed, so a crash never
// leaves a half-written checkpoint under the real name.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { EngineStage } from '../../native/index.ts';

export function stageCheckpointPath(dir: string, stage: EngineStage): string {
  return join(dir, `stage-${stage.spec.layerBegin}-${stage.spec.layerEnd}.safetensors`);
}

export async function writeStageCheckpoint(dir: string, stage: EngineStage): Promise<string> {
  await mkdir(dir, { recursive: true });
  const path = stageCheckpointPath(dir, stage);
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, stage.state());
  await rename(tmp, path);
  return path;
}

export async function readStageCheckpoint(dir: string, stage: EngineStage): Promise<void> {
  const path = stageCheckpointPath(dir, stage);
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new Error(`no checkpoint for ${stage.describe} at ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  stage.loadState(bytes, path);
}
