// The Kubernetes manifests, checked by what can run here: every file parses
// as YAML into objects Kubernetes could take; every caravan flag they use
// exists in that command's --help; hosts ask for one GPU each and take the
// NATS URL from a Secret; and the NATS cluster config of nats.yaml, with only
// addresses, ports and the store rewritten for one machine, starts a real
// 3-node JetStream cluster that takes a replicas-3 stream.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { parseAllDocuments } from 'yaml';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { freeLoopbackPorts } from '../../runtime/nats/nats-cluster.ts';
import { caravan } from '../support/caravan-cli.ts';
import { eventually, healthy, kill, start } from '../support/nats-process.ts';

const k8sDir = fileURLToPath(new URL('../../deploy/k8s', import.meta.url));

type Doc = { apiVersion?: string; kind?: string; metadata?: { name?: string }; [k: string]: unknown };

async function manifests(): Promise<Array<{ file: string; doc: Doc }>> {
  const out: Array<{ file: string; doc: Doc }> = [];
  for (const file of (await readdir(k8sDir)).filter((f) => f.endsWith('.yaml')).sort()) {
    for (const d of parseAllDocuments(await readFile(join(k8sDir, file), 'utf8'))) {
      if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
      out.push({ file, doc: d.toJS() as Doc });
    }
  }
  return out;
}

type Container = { name: string; image?: string; command?: string[]; args?: string[]; env?: Array<{ name: string; valueFrom?: { secretKeyRef?: unknown } }>; resources?: { limits?: Record<string, unknown> } };

function containers(doc: Doc): Container[] {
  const spec = (doc.spec as { template?: { spec?: { containers?: Container[]; initContainers?: Container[] } } } | undefined)?.template?.spec;
  return [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])];
}

/** The caravan subcommand and flags a container runs, from its command and args. */
function caravanInvocation(c: Container): { command: string; flags: string[] } | undefined {
  const words = [...(c.command ?? []), ...(c.args ?? [])].join(' ').split(/\s+/);
  const viaWrapper = words.findIndex((w) => w.endsWith('deploy/bin/caravan'));
  const at = viaWrapper >= 0 ? viaWrapper + 1 : c.image?.startsWith('caravan') && !c.command ? 0 : -1;
  if (at < 0) return undefined;
  return { command: words[at], flags: words.filter((w) => /^--[a-z]/.test(w)).map((w) => w.replace(/=.*/, '')) };
}

test('every manifest parses into Kubernetes objects with apiVersion, kind and name', async (t) => {
  const docs = await manifests();
  const kinds = docs.map(({ doc }) => `${doc.kind}/${doc.metadata?.name}`);
  for (const expected of ['Namespace/caravan', 'StatefulSet/nats', 'ConfigMap/nats-config', 'Service/nats', 'Deployment/caravan-coordinator', 'ConfigMap/caravan-run', 'StatefulSet/caravan-host']) {
    t.true(kinds.includes(expected), `${expected} in ${kinds.join(', ')}`);
  }
  for (const { file, doc } of docs) t.truthy(doc.apiVersion && doc.kind && doc.metadata?.name, `${file}: ${JSON.stringify(doc).slice(0, 80)}`);
});

test('every caravan flag in the manifests exists in that command\'s --help', async (t) => {
  const used = new Map<string, Set<string>>();
  for (const { doc } of await manifests()) {
    for (const c of containers(doc)) {
      const call = caravanInvocation(c);
      if (!call) continue;
      const flags = used.get(call.command) ?? new Set();
      for (const f of call.flags) flags.add(f);
      used.set(call.command, flags);
    }
  }
  t.deepEqual([...used.keys()].sort(), ['coordinator', 'host']);
  for (const [command, flags] of used) {
    const help = await caravan([command, '--help']);
    t.is(help.code, 0, help.stderr);
    for (const flag of flags) t.regex(help.stdout, new RegExp(`${flag}\\b`), `caravan ${command} --help names ${flag}`);
  }
  const run = (await manifests()).find(({ doc }) => doc.kind === 'ConfigMap' && doc.metadata?.name === 'caravan-run')!.doc as { data: Record<string, string> };
  const dir = await mkdtemp(join(tmpdir(), 'caravan-k8s-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'run.yaml'), run.data['run.yaml']);
  const { loadRunConfig } = await import('../../runtime/config/load-run-config.ts');
  const config = await loadRunConfig({ file: join(dir, 'run.yaml') });
  const hosts = (await manifests()).find(({ doc }) => doc.kind === 'StatefulSet' && doc.metadata?.name === 'caravan-host')!.doc as { spec: { replicas: number } };
  t.true(hosts.spec.replicas >= config.training.stages * config.training.replicas, 'enough hosts for every slot of the run config');
});

test('hosts ask for one GPU each and take the NATS URL from a Secret', async (t) => {
  const hosts = (await manifests()).find(({ doc }) => doc.kind === 'StatefulSet' && doc.metadata?.name === 'caravan-host')!.doc;
  const host = containers(hosts).find((c) => c.name === 'host')!;
  t.is(host.resources?.limits?.['nvidia.com/gpu'], 1);
  t.truthy(host.env?.find((e) => e.name === 'CARAVAN_NATS')?.valueFrom?.secretKeyRef);
});

test('the NATS cluster config of nats.yaml starts a real 3-node JetStream cluster', async (t) => {
  const cm = (await manifests()).find(({ doc }) => doc.kind === 'ConfigMap' && doc.metadata?.name === 'nats-config')!.doc as { data: Record<string, string> };
  const template = cm.data['nats.conf'];
  const ports = await freeLoopbackPorts(9);
  const dir = await mkdtemp(join(tmpdir(), 'caravan-k8s-nats-'));
  const servers: Array<ReturnType<typeof start>> = [];
  t.teardown(async () => {
    for (const s of servers) await kill(s);
    await rm(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 3; i++) {
    let conf = template
      .replace('listen: 0.0.0.0:4222', `listen: 127.0.0.1:${ports[i]}`)
      .replace('http: 0.0.0.0:8222', `http: 127.0.0.1:${ports[6 + i]}`)
      .replace('listen: 0.0.0.0:6222', `listen: 127.0.0.1:${ports[3 + i]}`)
      .replace('/data/jetstream', join(dir, `node-${i}`));
    for (let j = 0; j < 3; j++) conf = conf.replace(`nats-${j}.nats.caravan.svc.cluster.local:6222`, `127.0.0.1:${ports[3 + j]}`);
    t.notRegex(conf, /0\.0\.0\.0|svc\.cluster\.local|\/data\//, 'every address and path was rewritten');
    await writeFile(join(dir, `nats-${i}.conf`), conf);
    servers.push(start(join(dir, `nats-${i}.conf`), `nats-${i}`, { POD_NAME: `nats-${i}` }));
  }
  await Promise.all(servers.map((s, i) => healthy(s, ports[6 + i], 20_000)));
  const nc = await connect({ servers: ports.slice(0, 3).map((p) => `nats://127.0.0.1:${p}`) });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const { value: info } = await eventually(() => jsm.streams.add({ name: 'K8S', subjects: ['k8s.>'], num_replicas: 3 }), 20_000);
  t.is(info.config.num_replicas, 3);
  const ack = await jetstream(nc).publish('k8s.test', new Uint8Array(1024 * 1024));
  t.is(ack.seq, 1, 'a 1 MiB message is stored on the 3-replica stream');
  const names = new Set<string>();
  for (const i of [0, 1, 2]) names.add(((await (await fetch(`http://127.0.0.1:${ports[6 + i]}/varz`)).json()) as { server_name: string }).server_name);
  t.deepEqual([...names].sort(), ['nats-0', 'nats-1', 'nats-2'], 'server_name came from POD_NAME');
});
