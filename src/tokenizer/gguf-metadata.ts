/**
 * Reading the tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`,
 * `tokenizer.chat_template`).
 *
 * The metadata is parsed by `@huggingface/gguf` (Hugging Face's GGUF reader, MIT, Node >= 20),
 * which reads local files by byte ranges with `allowLocalFile: true` and never touches the network
 * for a path. Only the header is read (about 2 MB for a 49k vocabulary), not the tensor data.
 *
 * @example
 * ```ts
 * const meta = await readGgufTokenizerMetadata('SmolLM2-135M-Instruct-Q4_1.gguf');
 * meta.model;        // 'gpt2'
 * meta.tokens.length // 49152
 * ```
 * @module
 */

import { gguf } from '@huggingface/gguf';

import { ModelFormatError } from '../errors.js';

/** llama.cpp's token types (`tokenizer.ggml.token_type`). */
export const GgufTokenType = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** The tokenizer part of a GGUF's metadata, with llama.cpp's names shortened. */
export interface GgufTokenizerMetadata {
  /** The file it came from. */
  path: string;
  /** `general.architecture`, e.g. `'llama'`, `'gemma2'`. */
  architecture: string | undefined;
  /** `tokenizer.ggml.model`: `'gpt2'` (byte-level BPE), `'llama'` (SentencePiece), ... */
  model: string;
  /** `tokenizer.ggml.pre`: the pre-tokenizer (split regex) name, e.g. `'smollm'`, `'llama-bpe'`. */
  pre: string | undefined;
  tokens: string[];
  tokenTypes: number[] | undefined;
  scores: number[] | undefined;
  merges: string[] | undefined;
  bosTokenId: number | undefined;
  eosTokenId: number | undefined;
  /** `tokenizer.ggml.eot_token_id` (end of turn), when present. */
  eotTokenId: number | undefined;
  /** `tokenizer.ggml.eom_token_id` (end of message), when present. */
  eomTokenId: number | undefined;
  unknownTokenId: number | undefined;
  paddingTokenId: number | undefined;
  addBosToken: boolean | undefined;
  addEosToken: boolean | undefined;
  addSpacePrefix: boolean | undefined;
  /** `tokenizer.chat_template` (Jinja), when present. */
  chatTemplate: string | undefined;
}

function num(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}

function bool(v: unknown): boolean | undefined {
  return typeof v === 'boolean' ? v : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function strings(v: unknown, key: string, path: string): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new ModelFormatError(`${path}: ${key} is not an array of strings`);
  }
  return v as string[];
}

function numbers(v: unknown, key: string, path: string): number[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw new ModelFormatError(`${path}: ${key} is not an array`);
  return v.map((x) => {
    const n = num(x);
    if (n === undefined) throw new ModelFormatError(`${path}: ${key} holds a non-number`);
    return n;
  });
}

/**
 * Reads the tokenizer metadata of the GGUF at `path`.
 *
 * @throws ModelFormatError when the file is not a readable GGUF or has no `tokenizer.ggml.tokens`.
 */
export async function readGgufTokenizerMetadata(path: string): Promise<GgufTokenizerMetadata> {
  let metadata: Record<string, unknown>;
  try {
    metadata = (await gguf(path, { allowLocalFile: true })).metadata as Record<string, unknown>;
  } catch (e) {
    throw new ModelFormatError(`${path} is not a readable GGUF file: ${(e as Error).message}`, { cause: e });
  }
  const k = (name: string): unknown => metadata[name];
  const tokens = strings(k('tokenizer.ggml.tokens'), 'tokenizer.ggml.tokens', path);
  const model = str(k('tokenizer.ggml.model'));
  if (tokens === undefined || model === undefined) {
    throw new ModelFormatError(`${path} carries no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens are missing)`);
  }
  const tokenTypes = numbers(k('tokenizer.ggml.token_type'), 'tokenizer.ggml.token_type', path);
  const scores = numbers(k('tokenizer.ggml.scores'), 'tokenizer.ggml.scores', path);
  for (const [name, arr] of [
    ['token_type', tokenTypes],
    ['scores', scores],
  ] as const) {
    if (arr !== undefined && arr.length !== tokens.length) {
      throw new ModelFormatError(`${path}: tokenizer.ggml.${name} has ${arr.length} entries for ${tokens.length} tokens`);
    }
  }
  const meta: GgufTokenizerMetadata = {
    path,
    architecture: str(k('general.architecture')),
    model,
    pre: str(k('tokenizer.ggml.pre')),
    tokens,
    tokenTypes,
    scores,
    merges: strings(k('tokenizer.ggml.merges'), 'tokenizer.ggml.merges', path),
    bosTokenId: num(k('tokenizer.ggml.bos_token_id')),
    eosTokenId: num(k('tokenizer.ggml.eos_token_id')),
    eotTokenId: num(k('tokenizer.ggml.eot_token_id')),
    eomTokenId: num(k('tokenizer.ggml.eom_token_id')),
    unknownTokenId: num(k('tokenizer.ggml.unknown_token_id')),
    paddingTokenId: num(k('tokenizer.ggml.padding_token_id')),
    addBosToken: bool(k('tokenizer.ggml.add_bos_token')),
    addEosToken: bool(k('tokenizer.ggml.add_eos_token')),
    addSpacePrefix: bool(k('tokenizer.ggml.add_space_prefix')),
    chatTemplate: str(k('tokenizer.chat_template')),
  };
  for (const key of ['bosTokenId', 'eosTokenId', 'eotTokenId', 'eomTokenId', 'unknownTokenId', 'paddingTokenId'] as const) {
    const id = meta[key];
    if (id !== undefined && (id < 0 || id >= tokens.length)) {
      // llama.cpp writes -1 / out-of-range ids for "none" in some files: treat as absent.
      meta[key] = undefined;
    }
  }
  return meta;
}
