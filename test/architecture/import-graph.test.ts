// The layering the code is meant to keep, checked on the import graph of
// every .ts file under actors/, schemas/, runtime/ and native/: each rule
// names the edges it forbids, and a failure prints every offending edge as
// `file → import`. Specifiers come from TypeScript's own pre-processor, so
// `import type`, `export ... from` and dynamic `import()` all count: a type
// import ties the layers together as surely as a value import.
// Not a lint of style: only which folder may depend on which.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SCANNED = ['actors', 'schemas', 'runtime', 'native'];
/** native/build is the compiled addon, not source. */
const SKIPPED = new Set(['node_modules', 'native/build']);

/** One import: `from` and `to` are repo-relative paths (posix); `to` is the package name for a bare specifier. */
interface ImportEdge {
  readonly from: string;
  readonly to: string;
  readonly specifier: string;
}

function sourceFiles(dir: string): string[] {
  if (SKIPPED.has(dir)) return [];
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return sourceFiles(rel);
    return entry.isFile() && entry.name.endsWith('.ts') ? [rel] : [];
  });
}

/** `lodash/fp` → `lodash`, `@nats-io/kv/internal` → `@nats-io/kv`, `node:fs` stays. */
function packageName(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function importEdge(from: string, specifier: string): ImportEdge {
  const to = specifier.startsWith('.') ? path.posix.join(path.posix.dirname(from), specifier) : packageName(specifier);
  return { from, to, specifier };
}

function importEdges(files: readonly string[]): ImportEdge[] {
  return files.flatMap((from) => {
    const { importedFiles } = ts.preProcessFile(readFileSync(path.join(ROOT, from), 'utf8'), true, true);
    return importedFiles.map(({ fileName }) => importEdge(from, fileName));
  });
}

const under = (folder: string) => (file: string) => file.startsWith(`${folder}/`);
/** An import of the repo's own code rather than of a package. */
const local = (edge: ImportEdge) => edge.specifier.startsWith('.');

interface Rule {
  readonly name: string;
  readonly applies: (from: string) => boolean;
  readonly forbids: (edge: ImportEdge) => boolean;
}

const RULES: readonly Rule[] = [
  {
    name: 'actors/ imports only schemas/ and xstate',
    applies: under('actors'),
    forbids: ({ to }) => !(under('actors')(to) || under('schemas')(to) || to === 'xstate'),
  },
  {
    name: 'schemas/ imports nothing of the repo outside schemas/',
    applies: under('schemas'),
    forbids: (edge) => local(edge) && !under('schemas')(edge.to),
  },
  {
    // The engine's surface takes the model and optimizer configs as the wire format defines them; schemas/ is pure and imports nothing.
    name: 'native/ imports nothing of the TS code outside native/ but schemas/',
    applies: under('native'),
    forbids: (edge) => local(edge) && !under('native')(edge.to) && !under('schemas')(edge.to),
  },
  {
    name: 'runtime/coordinator/ imports no runtime/host/ module',
    applies: under('runtime/coordinator'),
    forbids: ({ to }) => under('runtime/host')(to),
  },
  {
    name: 'runtime/telemetry/ imports no runtime/host/ module',
    applies: under('runtime/telemetry'),
    forbids: ({ to }) => under('runtime/host')(to),
  },
  {
    name: 'runtime/host/ imports no runtime/train/ module',
    applies: under('runtime/host'),
    forbids: ({ to }) => under('runtime/train')(to),
  },
  {
    name: 'runtime/host/ imports no runtime/synthetic/ module',
    applies: under('runtime/host'),
    forbids: ({ to }) => under('runtime/synthetic')(to),
  },
  {
    name: 'runtime/config/ imports no runtime/train/ module',
    applies: under('runtime/config'),
    forbids: ({ to }) => under('runtime/train')(to),
  },
];

/** Each rule's offending edges, as printable `file → import` lines; empty when the graph keeps every rule. */
function ruleViolations(edges: readonly ImportEdge[], rules: readonly Rule[] = RULES): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const rule of rules) {
    const lines = edges.filter((e) => rule.applies(e.from) && rule.forbids(e)).map((e) => `${e.from} → ${e.specifier}`);
    if (lines.length > 0) found.set(rule.name, lines);
  }
  return found;
}

/** runtime/host/x.ts → runtime/host; a file directly under runtime/ is a unit of its own. */
function runtimeUnit(file: string): string | undefined {
  if (!under('runtime')(file)) return undefined;
  const parts = file.split('/');
  return parts.length > 2 ? `${parts[0]}/${parts[1]}` : file;
}

/**
 * Import cycles between runtime/ folders: each strongly connected component
 * of the folder graph with more than one folder, as the folders in it and the
 * file edges that tie it together (Tarjan's algorithm).
 */
function folderCycles(edges: readonly ImportEdge[]): Array<{ folders: string[]; edges: string[] }> {
  const between = edges.flatMap((e) => {
    const a = runtimeUnit(e.from);
    const b = runtimeUnit(e.to);
    return a && b && a !== b ? [{ a, b, edge: e }] : [];
  });
  const next = new Map<string, Set<string>>();
  for (const { a, b } of between) {
    if (!next.has(a)) next.set(a, new Set());
    if (!next.has(b)) next.set(b, new Set());
    next.get(a)!.add(b);
  }
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v)!) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) components.push(component.sort());
    }
  };
  for (const v of [...next.keys()].sort()) if (!index.has(v)) visit(v);
  return components.map((folders) => ({
    folders,
    edges: between
      .filter(({ a, b }) => folders.includes(a) && folders.includes(b))
      .map(({ edge }) => `${edge.from} → ${edge.specifier}`),
  }));
}

/**
 * Folder cycles that exist today: logged rather than failed on, until the
 * work that breaks them lands. Any other cycle (a new one, or one of these
 * grown by a folder) fails the test; a listed cycle that is gone is logged.
 */
const KNOWN_CYCLES: ReadonlyArray<readonly string[]> = [
  // transport/connect.ts reads the host key from security/; security/ reuses transport/'s subject names and slot reads.
  ['runtime/security', 'runtime/transport'],
];

const sameFolders = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((f) => b.includes(f));

const EDGES = importEdges(SCANNED.flatMap(sourceFiles));

test('the scan sees the repo: every top folder has files and imports', (t) => {
  for (const top of SCANNED) t.true(EDGES.some((e) => under(top)(e.from)), `no imports found under ${top}/`);
  t.true(EDGES.some((e) => e.to === 'xstate'), 'actors import xstate');
});

for (const rule of RULES) {
  test(`import rule: ${rule.name}`, (t) => {
    const lines = ruleViolations(EDGES, [rule]).get(rule.name) ?? [];
    t.deepEqual(lines, [], `${rule.name}; violating edges:\n  ${lines.join('\n  ')}`);
  });
}

test('no import cycles between runtime/ folders', (t) => {
  const cycles = folderCycles(EDGES);
  for (const cycle of cycles) {
    const known = KNOWN_CYCLES.some((k) => sameFolders(k, cycle.folders));
    t.log(`${known ? 'known' : 'new'} cycle between ${cycle.folders.join(', ')}:\n  ${cycle.edges.join('\n  ')}`);
  }
  for (const k of KNOWN_CYCLES) {
    if (!cycles.some((c) => sameFolders(k, c.folders))) t.log(`known cycle ${k.join(', ')} is gone: drop it from KNOWN_CYCLES`);
  }
  const fresh = cycles.filter((c) => !KNOWN_CYCLES.some((k) => sameFolders(k, c.folders)));
  t.deepEqual(fresh.map((c) => c.folders), [], 'import cycles between runtime/ folders (edges logged above)');
});

test('the checker catches a violation and a cycle in a synthetic graph', (t) => {
  const edges = [
    importEdge('actors/stage-machine.ts', 'xstate'),
    importEdge('actors/stage-machine.ts', '../schemas/run-config.ts'),
    importEdge('actors/stage-machine.ts', '../runtime/transport/edge-stream.ts'),
    importEdge('schemas/run-config.ts', 'node:crypto'),
    importEdge('schemas/run-config.ts', '../runtime/log.ts'),
    importEdge('runtime/host/stage-runner.ts', '../synthetic/synthetic-stage.ts'),
    importEdge('runtime/a/one.ts', '../b/two.ts'),
    importEdge('runtime/b/two.ts', '../c/three.ts'),
    importEdge('runtime/c/three.ts', '../a/one.ts'),
    importEdge('runtime/c/three.ts', '../log.ts'),
  ];
  const found = ruleViolations(edges);
  t.deepEqual(found.get('actors/ imports only schemas/ and xstate'), ['actors/stage-machine.ts → ../runtime/transport/edge-stream.ts']);
  t.deepEqual(found.get('runtime/host/ imports no runtime/synthetic/ module'), ['runtime/host/stage-runner.ts → ../synthetic/synthetic-stage.ts']);
  t.deepEqual(found.get('schemas/ imports nothing of the repo outside schemas/'), ['schemas/run-config.ts → ../runtime/log.ts']);
  t.is(found.size, 3);
  t.deepEqual(folderCycles(edges), [{
    folders: ['runtime/a', 'runtime/b', 'runtime/c'],
    edges: ['runtime/a/one.ts → ../b/two.ts', 'runtime/b/two.ts → ../c/three.ts', 'runtime/c/three.ts → ../a/one.ts'],
  }]);
});
