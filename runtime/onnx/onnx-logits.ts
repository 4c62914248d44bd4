// Runs a graph from buildLlamaOnnx on onnxruntime (CPU) and returns its logits.
// Tests use runOnnxLogits once per model; the benchmark opens a session once and
// calls runSessionLogits in its loop so that session creation (graph
// optimisation, weight prepacking) stays out of the timings.

import * as ort from 'onnxruntime-node';

export type OnnxSessionOptions = ort.InferenceSession.SessionOptions;

export function openOnnxSession(modelBytes: Uint8Array, sessionOptions: OnnxSessionOptions = {}): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(modelBytes, sessionOptions);
}

/** Logits [B, T, V] flattened, for tokens [B, T] row-major. */
export async function runSessionLogits(session: ort.InferenceSession, tokens: Int32Array, B: number, T: number): Promise<Float32Array> {
  if (!Number.isSafeInteger(B) || !Number.isSafeInteger(T) || B <= 0 || T <= 0) {
    throw new Error(`runSessionLogits: batch ${B} and seq ${T} must be positive integers`);
  }
  if (tokens.length !== B * T) {
    throw new Error(`runSessionLogits: ${tokens.length} tokens for batch ${B} × seq ${T} (expected ${B * T})`);
  }
  const bad = tokens.findIndex((t) => t < 0);
  if (bad >= 0) throw new Error(`runSessionLogits: token ${tokens[bad]} at index ${bad} is negative`);

  const inputIds = new ort.Tensor('int64', BigInt64Array.from(tokens, (t) => BigInt(t)), [B, T]);
  const out = await session.run({ input_ids: inputIds });
  const logits = out.logits;
  if (logits === undefined || logits.type !== 'float32') {
    throw new Error(`runSessionLogits: the session has no float32 output "logits" (outputs: ${Object.keys(out).join(', ')})`);
  }
  const [b, t] = logits.dims;
  if (logits.dims.length !== 3 || b !== B || t !== T) {
    throw new Error(`runSessionLogits: logits have dims [${logits.dims.join(', ')}], expected [${B}, ${T}, V]`);
  }
  return logits.data as Float32Array;
}

export async function runOnnxLogits(
  modelBytes: Uint8Array,
  tokens: Int32Array,
  B: number,
  T: number,
  sessionOptions?: OnnxSessionOptions,
): Promise<Float32Array> {
  const session = await openOnnxSession(modelBytes, sessionOptions);
  try {
    return await runSessionLogits(session, tokens, B, T);
  } finally {
    await session.release();
  }
}
