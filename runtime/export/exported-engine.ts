// An exported model back in the engine: one stage holding every layer, its
// parameters set from the export. For `caravan eval`, and as the side the
// ONNX export is checked against.
import { EngineStage, DEFAULT_OPTIMIZER } from '../../native/index.ts';
import type { ExportedModel } from './hf-llama.ts';

export function engineFromExport(exported: ExportedModel, threads?: number): EngineStage {
  const { model } = exported;
  const stage = new EngineStage({ model, optim: DEFAULT_OPTIMIZER, layerBegin: 0, layerEnd: model.nLayers, seed: 0, threads });
  for (const entry of stage.tensors()) {
    const t = exported.tensors.get(entry.name);
    if (!t) throw new Error(`the export has no tensor ${entry.name}`);
    stage.param(entry.name).set(t.data);
  }
  return stage;
}
