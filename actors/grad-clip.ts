// Clipping by global norm across a whole replica: every stage reports Σg² per
// tensor, and the sums are added in model order (stage by stage, tensor by
// tensor), so the factor is the same bits however the model is split.
// native/src/driver.cpp mirrors this rule exactly.

export interface ClipDecision {
  /** ‖g‖₂ of the step's mean gradient (the accumulated sum over microbatches divided by M). */
  readonly gradNorm: number;
  /** What each stage multiplies its accumulated gradient by: clip factor / M. */
  readonly gradScale: number;
  readonly clipped: boolean;
}

export function clipDecision(sumSquaresByStage: readonly Float64Array[], microbatches: number, maxNorm: number): ClipDecision {
  let total = 0;
  for (const stage of sumSquaresByStage) for (const v of stage) total += v;
  const gradNorm = Math.sqrt(total) / microbatches;
  const clipped = maxNorm > 0 && gradNorm > maxNorm;
  const factor = clipped ? maxNorm / (gradNorm + 1e-6) : 1;
  return { gradNorm, gradScale: factor / microbatches, clipped };
}
