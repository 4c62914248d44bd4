// Every op's backward against central finite differences of its forward
// (native/src/gradcheck.cpp states the tolerance and why).
import test from 'ava';
import { gradcheck } from '../../native/index.ts';

const results = gradcheck(1);

test('every op family and whole stages are checked', (t) => {
  const ops = new Set(results.map((r) => r.op));
  for (const op of ['linear', 'rmsnorm', 'rope', 'attention', 'swiglu', 'embedding', 'cross_entropy', 'model', 'model (tied head)', 'stage [1, 2)']) {
    t.true(ops.has(op), `gradcheck covers ${op}`);
  }
  // Every tensor of the whole-model check, not a sample of them.
  t.is(results.filter((r) => r.op === 'model').length, 1 + 2 * 9 + 2); // embedding, 2 layers, norm, head
});

for (const r of results) {
  test(`gradient of ${r.op} w.r.t. ${r.input} agrees with finite differences`, (t) => {
    t.true(r.samples > 0);
    t.true(r.relErr <= r.tolerance, `relative error ${r.relErr.toExponential(2)} > tolerance ${r.tolerance}`);
  });
}

test('a second seed passes too', (t) => {
  const worst = Math.max(...gradcheck(7).map((r) => r.relErr / r.tolerance));
  t.true(worst <= 1, `worst error/tolerance ${worst}`);
});
