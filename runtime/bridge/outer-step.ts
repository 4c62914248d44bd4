// The outer optimizer of one stage: from the parameters at the last sync
// and the replicas' contributions, the parameters every replica continues
// from. Sums run in double, in replica order, so the result depends on the
// contributions alone; it is rounded to fp32 once.
//
//   g = mean over replicas of Δr,  Δr = θsync − θr  (sent as Δr in MX int8, or as θr in fp32)
//   nesterov: m ← μ·m + g;  θ ← θsync − lr·(g + μ·m)          (DiLoCo's outer SGD)
//   average:  θ ← mean of θr (fp32 payloads: exactly θ1 with one replica), or θsync − g
import type { PayloadKind } from './bridge-payload.ts';

export interface Contribution {
  readonly replica: number;
  readonly kind: PayloadKind;
  readonly values: Float32Array;  // θr (fp32) or Δr (mxint8), the stage's parameters in model order
}

export interface OuterStepInput {
  readonly sync: Float32Array;
  readonly momentum: Float32Array;
  readonly contributions: readonly Contribution[];
  readonly outer: 'nesterov' | 'average';
  readonly lr: number;
  readonly mu: number;
}

export function outerStep(o: OuterStepInput): { theta: Float32Array; momentum: Float32Array } {
  const n = o.sync.length;
  const cs = [...o.contributions].sort((a, b) => a.replica - b.replica);
  if (cs.length === 0) throw new Error('an outer step needs at least one contribution');
  for (const c of cs) {
    if (c.values.length !== n) throw new Error(`replica ${c.replica}'s contribution has ${c.values.length} values, the stage ${n}`);
  }
  const theta = new Float32Array(n);
  const momentum = new Float32Array(n);
  const inv = 1 / cs.length;
  for (let i = 0; i < n; i++) {
    const sync = o.sync[i];
    let sum = 0;  // of Δr, or of θr for an fp32 average
    const averageThetas = o.outer === 'average' && cs[0].kind === 'fp32';
    for (const c of cs) sum += averageThetas ? c.values[i] : c.kind === 'fp32' ? sync - c.values[i] : c.values[i];
    if (averageThetas) {
      theta[i] = cs.length === 1 ? sum : sum * inv;
      continue;
    }
    const g = sum * inv;
    if (o.outer === 'average') {
      theta[i] = sync - g;
    } else {
      const m = o.mu * o.momentum[i] + g;
      momentum[i] = m;
      theta[i] = sync - o.lr * (g + o.mu * m);
    }
  }
  return { theta, momentum };
}
