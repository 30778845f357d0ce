/**
 * Turning a GGUF's tokenizer metadata into the `tokenizer.json` a Hugging Face tokenizer would have.
 *
 * This is what transformers does when it loads a GGUF (`transformers/integrations/gguf/
 * gguf_tokenizer_mapping.py`, v5.18): a GGUF has no tokenizer.json, only llama.cpp's arrays, so the
 * tokenizer is rebuilt from them and then run by an ordinary tokenizer library. We build the same
 * object, with the same choices, and hand it to `@huggingface/tokenizers`; transformers (in the
 * oracle venv) is what the tests compare against.
 *
 * - `gpt2` (byte-level BPE: SmolLM2, Llama 3, Qwen, ...): the vocabulary as spelled in the file
 *   (re-spelled into the GPT-2 byte alphabet when a token is not), its merges, a ByteLevel
 *   pre-tokenizer (the GPT-2 split regex, or the one `tokenizer.ggml.pre` names) and decoder.
 * - `llama` (SentencePiece BPE: Llama 2, Mistral, Gemma): vocabulary, merges from the file or
 *   rebuilt from the scores, byte fallback (`<0xNN>`), Metaspace (`▁`) pre-tokenizer and decoder.
 *   Gemma needs its two fixes (space tokens re-spelled, merges ordered by vocabulary position).
 * - control tokens (`token_type` 3) become special added tokens, user-defined ones (4) plain added tokens.
 * @module
 */

import { InvalidArgumentError, ModelFormatError } from '../errors.js';
import { GgufTokenType, type GgufTokenizerMetadata } from './gguf-metadata.js';

/** A tokenizer.json-shaped object (only what `@huggingface/tokenizers` reads). */
export interface TokenizerJson {
  normalizer: unknown;
  pre_tokenizer: unknown;
  model: {
    type: string;
    vocab: Record<string, number>;
    merges: [string, string][] | string[];
    [k: string]: unknown;
  };
  post_processor: unknown;
  decoder: unknown;
  added_tokens: AddedTokenJson[];
}

/** One entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** What a GGUF tells beyond the tokenizer.json: the tokenizer_config.json equivalent. */
export interface TokenizerSettings {
  bosTokenId: number | undefined;
  eosTokenIds: number[];
  unkTokenId: number | undefined;
  padTokenId: number | undefined;
  /** Whether `encode` adds the BOS token by default. */
  addBos: boolean;
  /** Whether `encode` appends the EOS token by default. */
  addEos: boolean;
  chatTemplate: string | undefined;
  /** `'byte-level'` (GPT-2 style) or `'sentencepiece'` (Metaspace `▁` with byte fallback), or `'other'`. */
  kind: 'byte-level' | 'sentencepiece' | 'other';
  /** For sentencepiece: whether a `▁` is prepended to the text (and stripped again when decoding). */
  addPrefixSpace: boolean;
}

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> unicode alphabet

let byteToUnicodeTable: string[] | undefined;

/** GPT-2's `bytes_to_unicode()`: printable stand-ins for the 256 byte values. */
export function bytesToUnicode(): string[] {
  if (byteToUnicodeTable !== undefined) return byteToUnicodeTable;
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const table = new Array<string>(256);
  bs.forEach((b, i) => (table[b] = String.fromCodePoint(cs[i]!)));
  byteToUnicodeTable = table;
  return table;
}

let unicodeToByteTable: Map<string, number> | undefined;

/** The inverse of {@link bytesToUnicode}. */
export function unicodeToBytes(): Map<string, number> {
  if (unicodeToByteTable === undefined) {
    unicodeToByteTable = new Map(bytesToUnicode().map((c, b) => [c, b]));
  }
  return unicodeToByteTable;
}

function inByteAlphabet(token: string): boolean {
  const alphabet = unicodeToBytes();
  for (const ch of token) if (!alphabet.has(ch)) return false;
  return true;
}

function respellBytes(token: string): string {
  const table = bytesToUnicode();
  let out = '';
  for (const b of new TextEncoder().encode(token)) out += table[b];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer split regexes per `tokenizer.ggml.pre`, as transformers maps them (others: GPT-2's).

const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}" +
  '| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';
const TEKKEN_SPLIT =
  '[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+' +
  '|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*' +
  '|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';
const GPT4O_SPLIT =
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?" +
  '|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';
const QWEN2_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN35_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** `tokenizer.ggml.pre` -> split regex (same table as transformers' GGUF_PRE_TOKENIZER_SPLITS). */
export const PRE_TOKENIZER_SPLITS: Readonly<Record<string, string>> = Object.freeze({
  llama3: LLAMA3_SPLIT,
  'llama-v3': LLAMA3_SPLIT,
  'llama-bpe': LLAMA3_SPLIT,
  falcon3: LLAMA3_SPLIT,
  'falcon-h1': LLAMA3_SPLIT,
  pixtral: LLAMA3_SPLIT,
  'midm-2.0': LLAMA3_SPLIT,
  lfm2: LLAMA3_SPLIT,
  'jina-v5-nano': LLAMA3_SPLIT,
  dbrx: LLAMA3_SPLIT,
  'smaug-bpe': LLAMA3_SPLIT,
  tekken: TEKKEN_SPLIT,
  qwen2: QWEN2_SPLIT,
  'deepseek-r1-qwen': QWEN2_SPLIT,
  kormo: QWEN2_SPLIT,
  f2llmv2: QWEN2_SPLIT,
  megrez: QWEN2_SPLIT,
  qwen35: QWEN35_SPLIT,
  'gpt-4o': GPT4O_SPLIT,
  llama4: GPT4O_SPLIT,
  kanana2: GPT4O_SPLIT,
  talkie: GPT4O_SPLIT,
  'minimax-m2': GPT4O_SPLIT,
});

// ---------------------------------------------------------------------------------------------

/**
 * Merges implied by a vocabulary (SentencePiece BPE files without `tokenizer.ggml.merges`): every
 * split of a token into two tokens of the vocabulary, best score first (transformers'
 * `generate_merges`, ties broken the same way).
 */
export function generateMerges(vocab: Map<string, number>, scores: Map<string, number>): [string, string][] {
  const merges: { l: string; r: string; score: number }[] = [];
  // Both halves of a split are vocabulary tokens shorter than the token split, so neither is
  // longer than the second-longest token: bounding i by it keeps one very long token (a corrupt
  // file) from costing its length squared, with the same result.
  let longest = 0;
  let second = 0;
  for (const t of vocab.keys()) {
    const n = Array.from(t).length;
    if (n > longest) [longest, second] = [n, longest];
    else if (n > second) second = n;
  }
  for (const [merge, score] of scores) {
    const chars = Array.from(merge);
    const local: { l: string; r: string; score: number }[] = [];
    for (let i = Math.max(1, chars.length - second); i < chars.length && i <= second; i++) {
      const l = chars.slice(0, i).join('');
      const r = chars.slice(i).join('');
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, score });
    }
    local.sort((a, b) => vocab.get(a.l)! - vocab.get(b.l)! || vocab.get(a.r)! - vocab.get(b.r)!);
    merges.push(...local);
  }
  // Python's sorted(..., key=(score, len(l), len(r)), reverse=True) is stable: equal keys keep
  // their order, which a descending comparator with a stable sort reproduces.
  const cpLen = (s: string): number => Array.from(s).length;
  merges.sort((a, b) => b.score - a.score || cpLen(b.l) - cpLen(a.l) || cpLen(b.r) - cpLen(a.r));
  return merges.map((m) => [m.l, m.r]);
}

function vocabObject(tokens: string[]): Record<string, number> {
  // A prototype-less object: tokens such as "__proto__" must be plain keys. Later duplicates win,
  // as in the Python dict comprehension transformers uses.
  const vocab = Object.create(null) as Record<string, number>;
  tokens.forEach((t, i) => (vocab[t] = i));
  return vocab;
}

function addedTokens(meta: GgufTokenizerMetadata, tokens: string[], byteLevel: boolean): AddedTokenJson[] {
  const types = meta.tokenTypes;
  if (types === undefined) return [];
  const out: AddedTokenJson[] = [];
  const vocab = new Set(tokens);
  types.forEach((type, id) => {
    const content = tokens[id]!;
    if (type === GgufTokenType.CONTROL) {
      // In a byte-level vocabulary a "control" token outside the byte alphabet is a llama.cpp mislabel.
      if (byteLevel && !inByteAlphabet(content)) return;
      out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    } else if (type === GgufTokenType.USER_DEFINED && vocab.has(content)) {
      out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false });
    }
  });
  // transformers' tokenizer classes also register their bos/eos/unk/pad tokens as special.
  const seen = new Set(out.map((t) => t.id));
  for (const id of [meta.bosTokenId, meta.eosTokenId, meta.unknownTokenId, meta.paddingTokenId]) {
    if (id === undefined || seen.has(id)) continue;
    const content = tokens[id]!;
    if (byteLevel && !inByteAlphabet(content)) continue;
    seen.add(id);
    out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  }
  out.sort((a, b) => a.id - b.id);
  return out;
}

/** Token names llama.cpp also treats as end-of-generation when they are in the vocabulary. */
const EOG_NAMES = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '<|end_of_text|>',
  '<EOT>',
  '<|eom_id|>',
  '<｜end▁of▁sentence｜>',
];

function eosIds(meta: GgufTokenizerMetadata, tokens: string[]): number[] {
  const ids = new Set<number>();
  for (const id of [meta.eosTokenId, meta.eotTokenId, meta.eomTokenId]) if (id !== undefined) ids.add(id);
  const byName = new Map(tokens.map((t, i) => [t, i]));
  for (const name of EOG_NAMES) {
    const id = byName.get(name);
    if (id !== undefined && (meta.tokenTypes === undefined || meta.tokenTypes[id] === GgufTokenType.CONTROL)) ids.add(id);
  }
  return [...ids];
}

/**
 * The tokenizer.json equivalent of a GGUF's tokenizer, plus what tokenizer_config.json would say.
 *
 * @throws InvalidArgumentError for a tokenizer type we do not support (`t5`/unigram, `bert`, `rwkv`).
 * @throws ModelFormatError when the metadata is inconsistent.
 */
export function tokenizerJsonFromGguf(meta: GgufTokenizerMetadata): { json: TokenizerJson; settings: TokenizerSettings } {
  const arch = meta.architecture ?? '';
  if (meta.model === 'gpt2') {
    const tokens = meta.tokens.map((t) => (inByteAlphabet(t) ? t : respellBytes(t)));
    if (meta.merges === undefined) throw new ModelFormatError(`${meta.path}: a gpt2 tokenizer without tokenizer.ggml.merges`);
    const split = meta.pre !== undefined ? PRE_TOKENIZER_SPLITS[meta.pre] : undefined;
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
    const json: TokenizerJson = {
      normalizer: null,
      pre_tokenizer:
        split === undefined
          ? byteLevel
          : {
              type: 'Sequence',
              pretokenizers: [
                { type: 'Split', pattern: { Regex: split }, behavior: 'Isolated', invert: false },
                { ...byteLevel, use_regex: false },
              ],
            },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: false,
        vocab: vocabObject(tokens),
        merges: meta.merges,
      },
      post_processor: null,
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      added_tokens: addedTokens(meta, tokens, true),
    };
    return {
      json,
      settings: {
        bosTokenId: meta.bosTokenId,
        eosTokenIds: eosIds(meta, meta.tokens),
        unkTokenId: meta.unknownTokenId,
        padTokenId: meta.paddingTokenId,
        addBos: meta.addBosToken ?? false,
        addEos: meta.addEosToken ?? false,
        chatTemplate: meta.chatTemplate,
        kind: 'byte-level',
        addPrefixSpace: false,
      },
    };
  }

  if (meta.model === 'llama') {
    const gemma = arch === 'gemma' || arch === 'gemma2' || arch === 'gemma3';
    // Gemma stores tokens of 2+ spaces as real spaces; the tokenizer looks them up as '▁▁'.
    const tokens = gemma
      ? meta.tokens.map((t) => (t.includes(' ') && t.trim() === '' ? '▁'.repeat(Array.from(t).length) : t))
      : meta.tokens;
    let merges: [string, string][] | string[];
    if (meta.merges !== undefined) {
      merges = meta.merges;
    } else {
      const vocab = new Map(tokens.map((t, i) => [t, i]));
      let scores: Map<string, number>;
      if (gemma) {
        // Gemma's scores do not follow its merge order; the position in the file does.
        scores = new Map(tokens.map((t, i) => [t, -i]));
      } else {
        if (meta.scores === undefined) throw new ModelFormatError(`${meta.path}: a llama tokenizer with neither merges nor scores`);
        scores = new Map(tokens.map((t, i) => [t, meta.scores![i]!]));
      }
      merges = generateMerges(vocab, scores);
    }
    const unk = meta.unknownTokenId !== undefined ? tokens[meta.unknownTokenId]! : '<unk>';
    // transformers: add_prefix_space from tokenizer.ggml.add_space_prefix (default true), legacy=False -> 'first'.
    const addPrefixSpace = gemma ? false : (meta.addSpacePrefix ?? true);
    const json: TokenizerJson = gemma
      ? {
          normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
          // transformers adds Split(' ', merged_with_previous), a no-op once the normalizer removed every space.
          pre_tokenizer: null,
          model: { type: 'BPE', dropout: null, unk_token: unk, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: vocabObject(tokens), merges },
          post_processor: null,
          decoder: {
            type: 'Sequence',
            decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }],
          },
          added_tokens: addedTokens(meta, tokens, false),
        }
      : {
          normalizer: null,
          pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: addPrefixSpace ? 'first' : 'never', split: false },
          // LlamaTokenizer gives its BPE no unk_token: byte fallback covers everything.
          model: { type: 'BPE', dropout: null, unk_token: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: vocabObject(tokens), merges },
          post_processor: null,
          decoder: {
            type: 'Sequence',
            decoders: [
              { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
              { type: 'ByteFallback' },
              { type: 'Fuse' },
              ...(addPrefixSpace ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
            ],
          },
          added_tokens: addedTokens(meta, tokens, false),
        };
    return {
      json,
      settings: {
        bosTokenId: meta.bosTokenId,
        eosTokenIds: eosIds(meta, meta.tokens),
        unkTokenId: meta.unknownTokenId,
        padTokenId: meta.paddingTokenId,
        addBos: meta.addBosToken ?? true,
        addEos: meta.addEosToken ?? false,
        chatTemplate: meta.chatTemplate,
        kind: 'sentencepiece',
        addPrefixSpace,
      },
    };
  }

  throw new InvalidArgumentError(
    `${meta.path}: tokenizer.ggml.model '${meta.model}' is not supported (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)`,
  );
}
