// `caravan dashboard`: a live web page for one run, served on a local port
// until Ctrl-C. It reads the run as an observer would (any credentials that
// may read run state and the control log's step control), so the run cannot
// tell it is watched.
import { Command } from 'commander';
import { serveDashboard } from '../dashboard/dashboard-server.ts';
import { RunWatch } from '../dashboard/run-watch.ts';
import { createLogger } from '../log.ts';
import { readHostKey } from '../security/host-key.ts';
import { validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt } from './options.ts';

export function dashboardCommand(program: Command): void {
  program
    .command('dashboard')
    .description('serve a live web page for a run: loss and validation loss, tokens/s and MFU, stage utilization against the schedule\'s bound, slots and hosts, recoveries and Bridge syncs; it follows the run from NATS as an observer and works after the run has ended')
    .requiredOption('--nats <url>', 'NATS server or cluster')
    .requiredOption('--run <id>', 'run id')
    .option('--port <n>', 'port to serve on (0: any free one)', nonNegativeInt('--port'), 8090)
    .option('--host <address>', 'address to listen on; the page has no login, so keep it on loopback or behind one', '127.0.0.1')
    .option('--nkey <file>', 'authenticate as this nkey user (an observer seed from `caravan creds`)')
    .option('--validate-batches <n>', 'held-out batches to evaluate each complete set of replica 0\'s checkpoints on, on this machine\'s CPU (0: no validation loss)', nonNegativeInt('--validate-batches'), 4)
    .option('--trace-file <file>', 'the spans `caravan train --trace-file` writes: the page then shows the pipeline timeline of the last steps')
    .action(async (flags: { nats: string; run: string; port: number; host: string; nkey?: string; validateBatches: number; traceFile?: string }) => {
      validateRunId(flags.run);
      if (flags.nkey) await readHostKey(flags.nkey);  // a missing or bad seed is an error now, not a retry every 2 s
      const log = createLogger('caravan-dashboard');
      const watch = new RunWatch({ nats: flags.nats, run: flags.run, nkey: flags.nkey, log, validateBatches: flags.validateBatches, timeline: Boolean(flags.traceFile) });
      const server = await serveDashboard({ watch, run: flags.run, port: flags.port, host: flags.host, traceFile: flags.traceFile });
      watch.start();
      process.stderr.write(`caravan dashboard: run ${flags.run} on ${flags.nats} at ${server.url} (Ctrl-C to stop)\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await server.close();
      await watch.stop();
    });
}
