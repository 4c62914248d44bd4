// No function under runtime/ runs past MAX_LINES lines unless ALLOWED names
// it with a reason. Functions are found with the TypeScript parser alone (no
// type checking, so the whole tree parses in well under a second): function
// declarations, methods, constructors, accessors, and function expressions
// and arrow functions wherever they stand (assigned, returned, passed to a
// call). A function's length runs from its first line to its last, its
// nested functions included; a long nested function is listed on its own too.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const MAX_LINES = 120;

/**
 * Functions allowed past MAX_LINES, by `file#name` as the failure lists them,
 * each with the reason it should stay whole. Empty: none has one yet.
 */
const ALLOWED: ReadonlyMap<string, string> = new Map<string, string>([]);

interface LongFunction {
  /** `runtime/host/stage-runner.ts#startStage`: what ALLOWED matches. */
  readonly id: string;
  readonly line: number;
  readonly lines: number;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return sourceFiles(rel);
    return entry.isFile() && entry.name.endsWith('.ts') ? [rel] : [];
  });
}

function propertyName(name: ts.PropertyName | ts.BindingName, file: ts.SourceFile): string {
  return ts.isIdentifier(name) || ts.isPrivateIdentifier(name) || ts.isStringLiteral(name) || ts.isNumericLiteral(name) ? name.text : name.getText(file);
}

/** A readable name: its own, the variable or property it is assigned to, or `callee(…) argument` for a callback. */
function functionName(node: ts.FunctionLikeDeclaration, file: ts.SourceFile): string {
  if (ts.isConstructorDeclaration(node)) return `${className(node.parent, file)}.constructor`;
  if (node.name) {
    const own = propertyName(node.name, file);
    return ts.isClassLike(node.parent) ? `${className(node.parent, file)}.${own}` : own;
  }
  const parent = node.parent;
  if ((ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) && parent.name) {
    return propertyName(parent.name, file);
  }
  if (ts.isCallExpression(parent) || ts.isNewExpression(parent)) {
    const callee = parent.expression.getText(file).replace(/\s+/g, ' ');
    return `${callee.length > 40 ? `…${callee.slice(-40)}` : callee}(…) argument`;
  }
  return `anonymous ${ts.SyntaxKind[node.kind]}`;
}

function className(node: ts.Node, file: ts.SourceFile): string {
  return ts.isClassLike(node) && node.name ? node.name.text : `class at line ${file.getLineAndCharacterOfPosition(node.getStart(file)).line + 1}`;
}

/** The functions in `text` (the file `rel`) longer than `maxLines`. */
function longFunctions(rel: string, text: string, maxLines: number): LongFunction[] {
  const file = ts.createSourceFile(rel, text, ts.ScriptTarget.Latest, true);
  const found: LongFunction[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const fn = node as ts.FunctionLikeDeclaration;
      const first = file.getLineAndCharacterOfPosition(fn.getStart(file)).line + 1;
      const last = file.getLineAndCharacterOfPosition(fn.getEnd()).line + 1;
      if (last - first + 1 > maxLines) found.push({ id: `${rel}#${functionName(fn, file)}`, line: first, lines: last - first + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(file);
  return found;
}

test(`no function under runtime/ is longer than ${MAX_LINES} lines unless allowed with a reason`, (t) => {
  const all = sourceFiles('runtime').flatMap((rel) => longFunctions(rel, readFileSync(path.join(ROOT, rel), 'utf8'), MAX_LINES));
  const describe = (f: LongFunction) => `${f.id} (line ${f.line}): ${f.lines} lines`;
  const unexplained = [...ALLOWED].filter(([, reason]) => reason.trim() === '').map(([id]) => id);
  t.deepEqual(unexplained, [], 'every function in ALLOWED needs a reason');
  for (const f of all.filter((f) => ALLOWED.has(f.id))) t.log(`allowed: ${describe(f)}: ${ALLOWED.get(f.id)}`);
  for (const id of ALLOWED.keys()) if (!all.some((f) => f.id === id)) t.log(`${id} is allowed but no longer long (or gone): drop it from ALLOWED`);
  const over = all.filter((f) => !ALLOWED.has(f.id)).map(describe);
  t.deepEqual(over, [], `functions over ${MAX_LINES} lines (split them, or allow one in ALLOWED with a reason):\n  ${over.join('\n  ')}`);
});

test('the measure finds declarations, methods, constructors, and assigned and passed functions, by name', (t) => {
  const body = (n: number) => `{\n${'  work();\n'.repeat(n)}}`;
  const sample = [
    `export function declared() ${body(4)}`,
    `class Stage { constructor() ${body(4)} step() ${body(4)} short() ${body(1)} }`,
    `const assigned = async () => ${body(4)};`,
    `const handlers = { onFrame: function () ${body(4)} };`,
    `program.command('x').action(() => ${body(4)});`,
    `function outer() { const inner = () => ${body(4)}; }`,  // both: outer's length holds inner's
    `const brief = () => ${body(3)};`,
  ].join('\n');
  const ids = longFunctions('sample.ts', sample, 5).map((f) => f.id);
  t.deepEqual(ids.sort(), [
    'sample.ts#Stage.constructor',
    'sample.ts#Stage.step',
    'sample.ts#assigned',
    'sample.ts#declared',
    'sample.ts#inner',
    'sample.ts#onFrame',
    'sample.ts#outer',
    "sample.ts#program.command('x').action(…) argument",
  ].sort());
  t.deepEqual(longFunctions('sample.ts', sample, 5).find((f) => f.id === 'sample.ts#declared'), { id: 'sample.ts#declared', line: 1, lines: 6 });
});
