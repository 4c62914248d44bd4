// The checker behind nats-seam.test.ts: which files of runtime/ may speak
// NATS, and the NATS names (subjects, stream and bucket names, KV keys) that
// only runtime/transport/subjects.ts may spell out. It parses each file with
// the TypeScript compiler, so comments, and words that merely look like names
// inside prose strings, never count.
//
// The rule:
// - `@nats-io/*` packages that talk to a server (transport-node, jetstream,
//   kv, obj, …) are imported only in runtime/transport/ (the client side)
//   and the server kits runtime/nats/nats-{server,cluster,supercluster}.ts
//   (which start servers and probe them).
// - `@nats-io/nkeys` is crypto, not NATS: it parses and creates the ed25519
//   keys a peer signs with and authenticates by. It is the security layer's
//   own concern, so runtime/security/ may import it too (and nothing else
//   outside the seam may).
// - A NATS name is built by runtime/transport/subjects.ts, nowhere else.
import ts from 'typescript';

export interface SeamViolation {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  readonly rule: 'import' | 'name';
  /** The import's module, or the literal as written. */
  readonly text: string;
  readonly why: string;
}

/** Where the client side of NATS lives. */
export const TRANSPORT = 'runtime/transport/';
/** The one file that spells NATS names. */
export const SUBJECTS = 'runtime/transport/subjects.ts';
/** The server kits: they start nats-server processes and check them with a client. */
export const SERVER_KITS: readonly string[] = ['runtime/nats/nats-server.ts', 'runtime/nats/nats-cluster.ts', 'runtime/nats/nats-supercluster.ts'];
/** The key package, and where it may be imported besides the seam. */
export const NKEYS = '@nats-io/nkeys';
export const SECURITY = 'runtime/security/';

export function importAllowed(file: string, pkg: string): boolean {
  if (file.startsWith(TRANSPORT) || SERVER_KITS.includes(file)) return true;
  return pkg === NKEYS && file.startsWith(SECURITY);
}

// Names that always belong to NATS: reply inboxes and JetStream's API, KV and object store subjects.
const NATS_PREFIXES = ['_INBOX', '$JS.', '$KV.', '$O.'];
// Run-scoped names, built from a run id: `caravan.<run>.…` subjects, `CARAVAN_<run>_…` streams,
// the bucket `caravan_<run>` and the streams behind it (`KV_…`, `OBJ_…`). `caravan.` counts only
// with the run right after it: OpenTelemetry attributes and metrics share that prefix
// ('caravan.stage', 'caravan.run.step') but are not subjects.
const RUN_SCOPED_HEADS = ['caravan.', 'CARAVAN_', 'caravan_', 'KV_', 'OBJ_'];
const RUN_RIGHT_AFTER = new Set(['caravan.']);
const NAME_SHAPED = /^[\w.*>${}-]+$/;
// KV keys with a dotted tail: `hosts.<id>`, `slot.<r>.<s>`, `bridge.<s>.<outer>`, `bridge-outer.<s>`, and their wildcards.
const KV_KEY = /^(hosts|slot|bridge|bridge-outer)\.(\$\{\}|[A-Za-z0-9_*>-])\S*$/;
// Single-word KV keys: only a name in the context of a bucket, so they count only there.
const KV_RECORD_KEYS = new Set(['config', 'state', 'summary']);
const KV_METHODS = new Set(['get', 'put', 'create', 'update', 'delete', 'purge', 'keys', 'watch', 'history']);
const KV_RECEIVER = /(^|\.)kv$/i;
// An argument that hands a helper the run's resources, its bucket or a run record's decoder: a record key beside it is a KV key.
const RUN_STATE_ARGUMENT = /(^|\.)(res|resources|kv)$|^decode[A-Z]/;

type Literal = ts.StringLiteral | ts.NoSubstitutionTemplateLiteral | ts.TemplateExpression;

/** A literal's text with each substitution written `${}`. */
function shapeOf(node: Literal): string {
  if (!ts.isTemplateExpression(node)) return node.text;
  return node.head.text + node.templateSpans.map((s) => `\${}${s.literal.text}`).join('');
}

function isLiteral(node: ts.Node): node is Literal {
  return ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node) || ts.isTemplateExpression(node);
}

/** Why a literal is a NATS name wherever it stands, or undefined. */
function nameByShape(node: Literal): string | undefined {
  const shape = shapeOf(node);
  const prefix = NATS_PREFIXES.find((p) => shape.startsWith(p));
  if (prefix) return `a NATS subject or stream name (${prefix}…)`;
  // Built from something, and shaped like a name: no spaces, '=' or ':' of a message (`CARAVAN_LOG_FORMAT=${format}: …`).
  const built = (h: string) => (RUN_RIGHT_AFTER.has(h) ? shape.startsWith(`${h}\${}`) : shape.includes('${}') && NAME_SHAPED.test(shape));
  const concatenated = ts.isBinaryExpression(node.parent) && node.parent.operatorToken.kind === ts.SyntaxKind.PlusToken;
  const head = RUN_SCOPED_HEADS.find((h) => shape.startsWith(h) && (shape === h || built(h) || concatenated));
  if (head) return `a run's NATS name built from its run id (${head}<run>…)`;
  if (KV_KEY.test(shape)) return 'a KV key of run state';
  return undefined;
}

/** The call whose argument list holds `node` (directly, or inside an object or array literal there), and the argument. */
function enclosingArgument(node: ts.Node): { call: ts.CallExpression; argument: ts.Expression } | undefined {
  let child: ts.Node = node;
  let parent = node.parent;
  while (parent && (ts.isArrayLiteralExpression(parent) || ts.isPropertyAssignment(parent) || ts.isObjectLiteralExpression(parent))) {
    child = parent;
    parent = parent.parent;
  }
  if (parent && ts.isCallExpression(parent) && parent.arguments.includes(child as ts.Expression)) return { call: parent, argument: child as ts.Expression };
  return undefined;
}

/** Why a literal is a KV key by where it stands, or undefined. */
function keyByContext(node: Literal): string | undefined {
  const found = enclosingArgument(node);
  if (found) {
    const callee = found.call.expression;
    // kv.get('…'), res.kv.keys('…'), kv.watch({ key: ['…'] }): the key argument of a bucket's method.
    if (ts.isPropertyAccessExpression(callee) && KV_METHODS.has(callee.name.text) && KV_RECEIVER.test(callee.expression.getText())
      && found.argument === found.call.arguments[0]) return `a KV key passed to ${callee.getText()}`;
    // readJson(res, 'state', …): a record key handed to a helper with the run's resources.
    if (KV_RECORD_KEYS.has(shapeOf(node)) && found.argument === node && found.call.arguments.some((a) => RUN_STATE_ARGUMENT.test(a.getText()))) {
      return `a KV key passed to ${callee.getText()} with the run's resources or a record's decoder`;
    }
  }
  // entry.key === 'state'
  const p = node.parent;
  if (KV_RECORD_KEYS.has(shapeOf(node)) && ts.isBinaryExpression(p) && [ts.SyntaxKind.EqualsEqualsEqualsToken, ts.SyntaxKind.ExclamationEqualsEqualsToken, ts.SyntaxKind.EqualsEqualsToken, ts.SyntaxKind.ExclamationEqualsToken].includes(p.operatorToken.kind)) {
    const other = p.left === node ? p.right : p.left;
    if (/(^|\.)key$/.test(other.getText())) return `a KV key compared with ${other.getText()}`;
  }
  return undefined;
}

/** The module a node imports, if it is an import of any form. */
function importedModule(node: ts.Node): ts.StringLiteral | undefined {
  if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) return node.moduleSpecifier;
  if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference) && ts.isStringLiteral(node.moduleReference.expression)) return node.moduleReference.expression;
  if (ts.isCallExpression(node) && (node.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(node.expression) && node.expression.text === 'require'))
    && node.arguments.length > 0 && ts.isStringLiteral(node.arguments[0])) return node.arguments[0];
  if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) return node.argument.literal;
  return undefined;
}

/** Every violation of the seam in one file (`file` relative to the repository root, with '/'). */
export function checkSource(file: string, text: string): SeamViolation[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: SeamViolation[] = [];
  const at = (node: ts.Node) => {
    const { line, character } = sf.getLineAndCharacterOfPosition(node.getStart(sf));
    return { line: line + 1, column: character + 1 };
  };
  const specifiers = new Set<ts.Node>();
  const visit = (node: ts.Node): void => {
    const module = importedModule(node);
    if (module) {
      specifiers.add(module);
      const pkg = module.text.split('/').slice(0, 2).join('/');
      if (module.text.startsWith('@nats-io/') && !importAllowed(file, pkg)) {
        const where = pkg === NKEYS ? `${TRANSPORT} and ${SECURITY}` : `${TRANSPORT} and the server kits`;
        out.push({ file, ...at(module), rule: 'import', text: module.text, why: `imports ${pkg}, which only ${where} may` });
      }
    } else if (isLiteral(node) && !specifiers.has(node) && file !== SUBJECTS) {
      const why = nameByShape(node) ?? keyByContext(node);
      if (why) out.push({ file, ...at(node), rule: 'name', text: node.getText(sf), why: `${why}: build it with ${SUBJECTS}` });
      if (ts.isTemplateExpression(node)) {
        // A literal inside a substitution is a literal of its own.
        for (const span of node.templateSpans) ts.forEachChild(span, visit);
        return;
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

export function formatViolation(v: SeamViolation): string {
  return `${v.file}:${v.line}:${v.column} ${v.text}: ${v.why}`;
}
