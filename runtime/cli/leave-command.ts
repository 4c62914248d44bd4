// `caravan leave`: an operator takes a replica out of a running run with the
// Bridge (its GPUs are wanted elsewhere). The coordinator answers where it
// ends: it trains to the next outer-step boundary past every step it has
// begun, contributes to that outer step last, and its hosts upload their
// final states and wait for the run's end; the other replicas go on without
// waiting for it. Only the coordinator's credentials may ask.
import type { Command } from 'commander';
import { connectToRun } from '../transport/connect.ts';
import { requestLeave } from '../transport/coordinator-channel.ts';
import { runNames, validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt } from './options.ts';

export function leaveCommand(program: Command): void {
  program
    .command('leave')
    .description('take a replica out of a running run with the Bridge, at its next outer-step boundary')
    .requiredOption('--nats <url>', 'NATS server or cluster')
    .requiredOption('--run <id>', 'run id')
    .requiredOption('--replica <n>', 'the replica that leaves', nonNegativeInt('--replica'))
    .option('--nkey <file>', "authenticate as this nkey user: the run's coordinator seed from `caravan creds`")
    .option('--json', 'print the answer as one JSON line')
    .action(async (flags: { nats: string; run: string; replica: number; nkey?: string; json?: boolean }) => {
      validateRunId(flags.run);
      const nc = await connectToRun(flags.nats, `caravan-leave-${flags.run}`, flags.run, flags.nkey);
      try {
        const reply = await requestLeave(nc, runNames(flags.run), flags.replica);
        if (flags.json) console.log(JSON.stringify(reply));
        if (!reply.ok) throw new Error(`replica ${flags.replica} cannot leave run ${flags.run}: ${reply.reason}`);
        if (!flags.json) console.log(`replica ${flags.replica} leaves run ${flags.run} after step ${reply.last_step}: outer step ${reply.outer} is the last it contributes to`);
      } finally {
        await nc.close();
      }
    });
}
