// The shape of a Llama-style model (docs/engine.md) and the checkpoint tensors it
// implies, in model order. Pure data shared by the runtime, the engine surface
// and the ONNX builder; part of a run's config on the wire.

/**
 * A residual bottleneck at position `at` (between layers at-1 and at): the
 * residual stream is projected down to `width` channels and back up. Where a
 * stage boundary falls on it, `width` channels cross the wire instead of d.
 */
export interface BottleneckSpec {
  readonly at: number;
  readonly width: number;
}

/** 'mxint8': each bottleneck's output and gradient are quantized inside the model (blocks of 32, power-of-two scales). */
export type BottleneckQuant = 'none' | 'mxint8';

export interface LlamaConfig {
  readonly vocabSize: number;
  readonly dModel: number;
  readonly nLayers: number;
  readonly nHeads: number;
  readonly nKvHeads: number;
  readonly ffnHidden: number;
  readonly maxSeqLen: number;
  readonly ropeTheta: number;
  readonly normEps: number;
  readonly tiedEmbeddings: boolean;
  /** Increasing positions in [1, nLayers); absent or empty: a plain Llama model. */
  readonly bottlenecks?: readonly BottleneckSpec[];
  /** 'none' when absent. */
  readonly bottleneckQuant?: BottleneckQuant;
  /**
   * Each bottleneck's up side adds a token embedding of its own
   * (model.bottlenecks.{at}.embed_tokens.weight [V, d]), so the token's
   * identity need not cross the wire; that stage reads the token ids from the
   * data. false when absent.
   */
  readonly bottleneckEmbed?: boolean;
}

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

export function headDim(config: LlamaConfig): number {
  return config.dModel / config.nHeads;
}

/** Throws one line naming the first field that cannot describe a valid model. */
export function validateLlamaConfig(config: LlamaConfig): void {
  const positiveInts = ['vocabSize', 'dModel', 'nLayers', 'nHeads', 'nKvHeads', 'ffnHidden', 'maxSeqLen'] as const;
  for (const key of positiveInts) {
    const value = config[key];
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new Error(`LlamaConfig.${key} must be a positive integer, got ${value}`);
    }
  }
  if (config.dModel % config.nHeads !== 0) {
    throw new Error(`LlamaConfig: dModel ${config.dModel} is not divisible by nHeads ${config.nHeads}`);
  }
  if (config.nHeads % config.nKvHeads !== 0) {
    throw new Error(`LlamaConfig: nHeads ${config.nHeads} is not divisible by nKvHeads ${config.nKvHeads}`);
  }
  // rotate_half pairs element i with i + hd/2, so hd must split evenly.
  if (headDim(config) % 2 !== 0) {
    throw new Error(`LlamaConfig: head dim ${headDim(config)} (dModel / nHeads) must be even for rotary embeddings`);
  }
  if (!(config.ropeTheta > 0) || !Number.isFinite(config.ropeTheta)) {
    throw new Error(`LlamaConfig.ropeTheta must be a positive finite number, got ${config.ropeTheta}`);
  }
  if (!(config.normEps > 0) || !Number.isFinite(config.normEps)) {
    throw new Error(`LlamaConfig.normEps must be a positive finite number, got ${config.normEps}`);
  }
  if (typeof config.tiedEmbeddings !== 'boolean') {
    throw new Error(`LlamaConfig.tiedEmbeddings must be a boolean, got ${String(config.tiedEmbeddings)}`);
  }
  const bottlenecks: unknown = config.bottlenecks;
  if (bottlenecks !== undefined) {
    if (!Array.isArray(bottlenecks)) throw new Error(`LlamaConfig.bottlenecks must be an array of {at, width}, got ${JSON.stringify(bottlenecks)}`);
    let previous = 0;
    bottlenecks.forEach((b: unknown, i) => {
      const { at, width } = (b ?? {}) as Partial<BottleneckSpec>;
      if (!Number.isSafeInteger(at) || at! <= previous || at! >= config.nLayers) {
        throw new Error(`LlamaConfig.bottlenecks[${i}].at must be an integer in (${previous}, ${config.nLayers}) (positions increase, within [1, nLayers)), got ${JSON.stringify(at)}`);
      }
      if (!Number.isSafeInteger(width) || width! < 1 || width! > config.dModel) {
        throw new Error(`LlamaConfig.bottlenecks[${i}].width must be an integer in [1, dModel=${config.dModel}], got ${JSON.stringify(width)}`);
      }
      previous = at!;
    });
  }
  if (config.bottleneckQuant !== undefined && config.bottleneckQuant !== 'none' && config.bottleneckQuant !== 'mxint8') {
    throw new Error(`LlamaConfig.bottleneckQuant must be 'none' or 'mxint8', got ${JSON.stringify(config.bottleneckQuant)}`);
  }
  if (config.bottleneckQuant === 'mxint8' && !(config.bottlenecks?.length)) {
    throw new Error("LlamaConfig.bottleneckQuant 'mxint8' needs at least one bottleneck");
  }
  if (config.bottleneckEmbed !== undefined && typeof config.bottleneckEmbed !== 'boolean') {
    throw new Error(`LlamaConfig.bottleneckEmbed must be a boolean, got ${JSON.stringify(config.bottleneckEmbed)}`);
  }
  if (config.bottleneckEmbed && !(config.bottlenecks?.length)) throw new Error('LlamaConfig.bottleneckEmbed needs at least one bottleneck');
}

/** k of the bottleneck at residual position `at`, or undefined. */
export function bottleneckWidth(config: LlamaConfig, at: number): number | undefined {
  return config.bottlenecks?.find((b) => b.at === at)?.width;
}

/** Checkpoint tensors in model order (the order they are listed, stored and hashed). */
export function llamaTensorSpecs(config: LlamaConfig): TensorSpec[] {
  validateLlamaConfig(config);
  const { vocabSize: V, dModel: d, nLayers, nHeads: H, nKvHeads: Hkv, ffnHidden: F } = config;
  const hd = headDim(config);
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [V, d] }];
  for (let i = 0; i < nLayers; i++) {
    const p = `model.layers.${i}`;
    const kIn = i > 0 ? bottleneckWidth(config, i) : undefined;
    if (kIn !== undefined && config.bottleneckEmbed) specs.push({ name: `model.bottlenecks.${i}.embed_tokens.weight`, shape: [V, d] });
    if (kIn !== undefined) specs.push({ name: `model.bottlenecks.${i}.up_proj.weight`, shape: [d, kIn] });
    specs.push(
      { name: `${p}.input_layernorm.weight`, shape: [d] },
      { name: `${p}.self_attn.q_proj.weight`, shape: [H * hd, d] },
      { name: `${p}.self_attn.k_proj.weight`, shape: [Hkv * hd, d] },
      { name: `${p}.self_attn.v_proj.weight`, shape: [Hkv * hd, d] },
      { name: `${p}.self_attn.o_proj.weight`, shape: [d, H * hd] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [d] },
      { name: `${p}.mlp.gate_proj.weight`, shape: [F, d] },
      { name: `${p}.mlp.up_proj.weight`, shape: [F, d] },
      { name: `${p}.mlp.down_proj.weight`, shape: [d, F] },
    );
    const kOut = i + 1 < nLayers ? bottleneckWidth(config, i + 1) : undefined;
    if (kOut !== undefined) specs.push({ name: `model.bottlenecks.${i + 1}.down_proj.weight`, shape: [kOut, d] });
  }
  specs.push({ name: 'model.norm.weight', shape: [d] });
  if (!config.tiedEmbeddings) specs.push({ name: 'lm_head.weight', shape: [V, d] });
  return specs;
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, s) => n * s, 1);
}
