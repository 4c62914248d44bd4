#!/usr/bin/env -S node --import=tsx
// caravan: the command line. Each command has --help; --json prints one
// machine-readable line; failures exit non-zero with one clear line.
import { Command, InvalidArgumentError } from 'commander';
import { tuneAllocator } from '../../native/index.ts';
import { errorFrames } from '../log.ts';
import { chaosCommand } from './chaos-command.ts';
import { credsCommand } from './creds-command.ts';
import { dashboardCommand } from './dashboard-command.ts';
import { wanCommand } from './wan-command.ts';
import { simulateCommand } from './simulate-command.ts';
import { leaveCommand } from './leave-command.ts';
import { modelCommands } from './model-commands.ts';
import { repartitionCommand } from './repartition-command.ts';
import { processCommands } from './process-commands.ts';
import { statusCommand } from './status-command.ts';
import { timelineCommand } from './timeline-command.ts';
import { trainCommand } from './train-command.ts';

tuneAllocator();

const program = new Command('caravan')
  .description('Pipeline-parallel transformer training across datacenters over NATS JetStream')
  .showHelpAfterError();

trainCommand(program);
processCommands(program);
statusCommand(program);
leaveCommand(program);
dashboardCommand(program);
chaosCommand(program);
modelCommands(program);
repartitionCommand(program);
timelineCommand(program);
credsCommand(program);
wanCommand(program);
simulateCommand(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof InvalidArgumentError ? err.message : err instanceof Error ? err.message : String(err);
  // A driver that keeps only a child's last line (chaos, train's children) asks for where the error was made.
  const where = process.env.CARAVAN_ERROR_FRAMES === '1' ? errorFrames(err) : '';
  process.stderr.write(`caravan: ${message}${where}\n`);
  process.exit(1);
}).then(() => process.exit(process.exitCode ?? 0));
