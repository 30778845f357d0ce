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

import { open, stat } from 'node:fs/promises';

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
 * Rejects a header whose tensor and metadata counts the file cannot hold (each tensor info takes
 * at least 24 bytes, each key/value 13). @huggingface/gguf would otherwise read them from the
 * zeros it sees past the end of the file: a 16-byte file declaring 8 million tensors took it
 * ~4 s of CPU (and up to 50 MB) before failing.
 */
async function checkHeaderCounts(path: string): Promise<void> {
  const f = await open(path, 'r');
  try {
    const size = (await f.stat()).size;
    const b = Buffer.alloc(24);
    const { bytesRead } = await f.read(b, 0, 24, 0);
    // What is missing of a short file reads as zeros, as it does for the reader.
    if (bytesRead < 8 || b.toString('latin1', 0, 4) !== 'GGUF') return; // the reader names what is wrong
    const version = b.readUInt32LE(4);
    // Version 1 stored the two counts as u32.
    const tensors = version === 1 ? BigInt(b.readUInt32LE(8)) : b.readBigUInt64LE(8);
    const kvs = version === 1 ? BigInt(b.readUInt32LE(12)) : b.readBigUInt64LE(16);
    if (tensors * 24n + kvs * 13n > BigInt(size)) {
      throw new ModelFormatError(`${path}: the GGUF header declares ${tensors} tensors and ${kvs} metadata entries, more than its ${size} bytes can hold (truncated or corrupt): no tokenizer can be read`);
    }
  } finally {
    await f.close();
  }
}

/**
 * Reads the tokenizer metadata of the GGUF at `path`.
 *
 * @throws ModelFormatError when the file is not a readable GGUF or has no `tokenizer.ggml.tokens`.
 */
export async function readGgufTokenizerMetadata(path: string): Promise<GgufTokenizerMetadata> {
  let metadata: Record<string, unknown>;
  let fileSize: number;
  try {
    await checkHeaderCounts(path);
    metadata = (await gguf(path, { allowLocalFile: true })).metadata as Record<string, unknown>;
    fileSize = (await stat(path)).size;
  } catch (e) {
    if (e instanceof ModelFormatError) throw e;
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
  const merges = strings(k('tokenizer.ggml.merges'), 'tokenizer.ggml.merges', path);
  const chatTemplate = str(k('tokenizer.chat_template'));
  // @huggingface/gguf reads in 2 MB chunks and sees zeros past the end of the file, so a corrupt
  // length or count gives strings and arrays the file cannot hold (a 300-byte file with a
  // 400,000-character token). Each string is stored as an 8-byte length plus at least one byte
  // per UTF-16 unit it decodes to: more than that in total cannot have come from this file.
  let need = chatTemplate === undefined ? 0 : 8 + chatTemplate.length;
  for (const list of [tokens, merges ?? []]) for (const s of list) need += 8 + s.length;
  if (need > fileSize) {
    throw new ModelFormatError(
      `${path}: tokenizer.ggml.tokens/merges and tokenizer.chat_template need at least ${need} bytes but the file has ${fileSize} (truncated or corrupt lengths)`,
    );
  }
  const meta: GgufTokenizerMetadata = {
    path,
    architecture: str(k('general.architecture')),
    model,
    pre: str(k('tokenizer.ggml.pre')),
    tokens,
    tokenTypes,
    scores,
    merges,
    bosTokenId: num(k('tokenizer.ggml.bos_token_id')),
    eosTokenId: num(k('tokenizer.ggml.eos_token_id')),
    eotTokenId: num(k('tokenizer.ggml.eot_token_id')),
    eomTokenId: num(k('tokenizer.ggml.eom_token_id')),
    unknownTokenId: num(k('tokenizer.ggml.unknown_token_id')),
    paddingTokenId: num(k('tokenizer.ggml.padding_token_id')),
    addBosToken: bool(k('tokenizer.ggml.add_bos_token')),
    addEosToken: bool(k('tokenizer.ggml.add_eos_token')),
    addSpacePrefix: bool(k('tokenizer.ggml.add_space_prefix')),
    chatTemplate,
  };
  for (const key of ['bosTokenId', 'eosTokenId', 'eotTokenId', 'eomTokenId', 'unknownTokenId', 'paddingTokenId'] as const) {
    const id = meta[key];
    if (id !== undefined && (!Number.isInteger(id) || id < 0 || id >= tokens.length)) {
      // llama.cpp writes -1 / out-of-range ids for "none" in some files: treat as absent (and a
      // non-integer, e.g. an id stored as a float, likewise).
      meta[key] = undefined;
    }
  }
  return meta;
}
