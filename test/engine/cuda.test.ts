// The CUDA backend: compiled into the driver wherever a CUDA compiler exists
// (development machines have nvcc but no GPU); checked against the CPU backend
// where a GPU exists. Without a GPU the check is skipped, and says why.
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { DRIVER_PATH } from '../../native/index.ts';

const run = promisify(execFile);

function hasNvcc(): boolean {
  try {
    execFileSync('nvcc', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function cudaInfo(): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(DRIVER_PATH, ['cuda-info']);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const info = await cudaInfo();
const gpu = info.code === 0;

(hasNvcc() ? test : test.skip)('with nvcc present, the driver is built with the CUDA backend', (t) => {
  t.notRegex(info.stderr, /this build has no CUDA backend/);
  // Either a GPU answered, or the backend said clearly why none is usable.
  if (!gpu) t.regex(info.stderr, /no CUDA GPU is usable on this machine/);
  else t.regex(info.stdout, /"compute_capability"/);
});

if (!gpu) {
  test.skip(`CUDA backend agrees with the CPU backend (skipped: ${info.stderr.trim() || 'no GPU'})`, () => {});
} else {
  test('CUDA backend agrees with the CPU backend', async (t) => {
    const { stdout } = await run(DRIVER_PATH, ['cuda-check'], { maxBuffer: 1 << 20 });
    const rows = stdout.trim().split('\n').map((l) => JSON.parse(l));
    t.true(rows.every((r) => r.ok === true), stdout);
  });
}
