// Runs the caravan CLI as a user would: a child process, its exit code,
// stdout and stderr.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** `guardMs`: a guard against a hang (under ava's timeout, package.json), not a speed limit: chaos runs on a loaded 2-core machine take minutes. */
export async function caravan(args: string[], env: Record<string, string> = {}, guardMs = 280_000): Promise<CliResult> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import=tsx', 'runtime/cli/bin.ts', ...args], {
      env: { ...process.env, ...env }, maxBuffer: 16 << 20, timeout: guardMs,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** The last stdout line, parsed: the --json summary. */
export function summaryOf(r: CliResult): Record<string, unknown> {
  const line = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line);
  } catch {
    throw new Error(`no JSON summary (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  }
}
