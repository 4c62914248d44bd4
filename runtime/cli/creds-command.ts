// `caravan creds`: mints a run's nkey users (coordinator, hosts, observers)
// into a folder and writes the nats-server authorization block for every run there.
import type { Command } from 'commander';
import { mintCredentials } from '../security/credentials.ts';
import { validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt, positiveInt } from './options.ts';

export function credsCommand(program: Command): void {
  program
    .command('creds')
    .description('mint nkey credentials for a run (coordinator, hosts, observers) and write the nats-server auth.conf for every run in the folder')
    .requiredOption('--dir <folder>', 'credentials folder: <folder>/<run>/*.nk seeds, <folder>/auth.conf')
    .requiredOption('--run <id>', 'run id the credentials are for')
    .option('--hosts <n>', 'host users (host-0 … host-<n-1>); existing ones are kept', nonNegativeInt('--hosts'), 0)
    .option('--observers <n>', 'read-only users for caravan status / export', nonNegativeInt('--observers'), 1)
    .option('--stages <n>', 'the run\'s pipeline stages (its input streams, one per slot, are named in the permissions); needed the first time', positiveInt('--stages'))
    .option('--replicas <n>', 'the run\'s replicas; needed the first time', positiveInt('--replicas'))
    .option('--rotate <name...>', 'replace these users\' keys (e.g. host-3 coordinator); reload the server afterwards')
    .option('--json', 'print the users as one JSON line')
    .action(async (flags: { dir: string; run: string; hosts: number; observers: number; stages?: number; replicas?: number; rotate?: string[]; json?: boolean }) => {
      validateRunId(flags.run);
      if ((flags.stages === undefined) !== (flags.replicas === undefined)) throw new Error('give --stages and --replicas together');
      const shape = flags.stages !== undefined ? { stages: flags.stages, replicas: flags.replicas! } : undefined;
      const { users, authConfig, hostKeys } = await mintCredentials({ dir: flags.dir, run: flags.run, hosts: flags.hosts, observers: flags.observers, rotate: flags.rotate, shape });
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ run: flags.run, auth_config: authConfig, host_keys: hostKeys, users: users.map(({ role, name, file, publicKey }) => ({ role, name, file, public_key: publicKey })) })}\n`);
        return;
      }
      for (const u of users) process.stdout.write(`${u.role.padEnd(11)} ${u.name.padEnd(12)} ${u.publicKey}  ${u.file}\n`);
      process.stdout.write(`server authorization: ${authConfig} (include it in the nats-server config; 'nats-server --signal reload' after a change)\n`);
      process.stdout.write(`host keys: ${hostKeys} (the only keys the coordinator admits; it reads the file beside its seed, or --host-keys)\n`);
    });
}
