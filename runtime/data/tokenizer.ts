// Tokenizers: text <-> token ids, byte-level (vocab 256) and GPT-2 BPE (vocab 50257).
// Not a general tokenizer library: only the two vocabularies caravan trains with.
//
// encode() returns Uint16Array: both vocabularies fit in 16 bits, and uint16 is
// what the llm.c / nanoGPT shards hold on disk, so encode -> writeTokenShard
// needs no conversion and a corpus costs 2 bytes per token in memory.

import { createRequire } from 'node:module';

type Gpt2Module = typeof import('gpt-tokenizer/encoding/gpt2');
let gpt2Module: Gpt2Module | undefined;

// Loaded on first use: the GPT-2 merge tables take ~0.2 s to load, which
// byte-level runs, shard tools and batch code should not pay at import time.
// require() of the package's CJS build keeps createTokenizer synchronous.
function loadGpt2(): Gpt2Module {
  gpt2Module ??= createRequire(import.meta.url)('gpt-tokenizer/encoding/gpt2') as Gpt2Module;
  return gpt2Module;
}

export type TokenizerName = 'byte' | 'gpt2';

export const TOKENIZER_NAMES: readonly TokenizerName[] = ['byte', 'gpt2'];

export interface Tokenizer {
  readonly name: TokenizerName;
  readonly vocabSize: number;
  encode(text: string): Uint16Array;
  /** Throws on an id outside [0, vocabSize). */
  decode(ids: ArrayLike<number>): string;
}

function checkIds(ids: ArrayLike<number>, vocabSize: number, name: TokenizerName): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new Error(`${name} tokenizer: cannot decode id ${id} at index ${i}: ids must be integers in [0, ${vocabSize})`);
    }
  }
}

export class ByteTokenizer implements Tokenizer {
  readonly name = 'byte' as const;
  readonly vocabSize = 256;
  readonly #encoder = new TextEncoder();
  // Non-fatal so that bytes sampled from a model that are not valid UTF-8 still
  // print (as U+FFFD) instead of aborting generation; ignoreBOM keeps a leading
  // U+FEFF in the text, so valid text round-trips exactly.
  readonly #decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  encode(text: string): Uint16Array {
    return Uint16Array.from(this.#encoder.encode(text));
  }

  decode(ids: ArrayLike<number>): string {
    checkIds(ids, this.vocabSize, this.name);
    return this.#decoder.decode(Uint8Array.from(ids));
  }
}

export class Gpt2Tokenizer implements Tokenizer {
  readonly name = 'gpt2' as const;
  readonly vocabSize: number;
  readonly #bpe: Gpt2Module;

  constructor() {
    this.#bpe = loadGpt2();
    this.vocabSize = this.#bpe.vocabularySize;
  }

  encode(text: string): Uint16Array {
    // Like tiktoken's encode_ordinary (used by nanoGPT's and llm.c's prepro):
    // a literal "<|endoftext|>" in a corpus is ordinary text, not the EOT token,
    // and must not make gpt-tokenizer throw. EOT is inserted on purpose, by id.
    return Uint16Array.from(this.#bpe.encode(text, { disallowedSpecial: new Set() }));
  }

  decode(ids: ArrayLike<number>): string {
    checkIds(ids, this.vocabSize, this.name);
    return this.#bpe.decode(Array.from(ids));
  }
}

export function createTokenizer(name: string): Tokenizer {
  switch (name) {
    case 'byte':
      return new ByteTokenizer();
    case 'gpt2':
      return new Gpt2Tokenizer();
    default:
      throw new Error(`unknown tokenizer ${JSON.stringify(name)}: expected one of ${TOKENIZER_NAMES.map((n) => `'${n}'`).join(', ')}`);
  }
}
