/**
 * Tokenizers for the models cascade-xla runs: from the vocabulary embedded in a GGUF file, or from
 * a Hugging Face `tokenizer.json` (+ `tokenizer_config.json` next to it).
 *
 * The tokenization itself is done by `@huggingface/tokenizers` (tokenizers.js, Apache-2.0, zero
 * dependencies, ~100 kB): the same pure-JS implementation of HF `tokenizer.json` pipelines
 * (normalizers, pre-tokenizers, BPE with merges/byte-fallback, decoders) that Transformers.js uses,
 * without Transformers.js's ONNX runtime and image dependencies. A GGUF's arrays are turned into a
 * tokenizer.json-shaped object first (see `from-gguf.ts`), exactly as Python transformers does
 * when it loads a GGUF. Chat templates (Jinja) are rendered by `@huggingface/jinja`, the Jinja
 * subset written for chat templates (lstrip_blocks/trim_blocks as transformers sets them).
 *
 * @example
 * ```ts
 * import { Tokenizer } from 'cascade-xla';
 * const tok = await Tokenizer.fromGguf('SmolLM2-135M-Instruct-Q4_1.gguf');
 * const ids = tok.encode('Hello world');            // [19556, 905]
 * tok.decode(ids);                                  // 'Hello world'
 * const prompt = tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
 * const stream = tok.decodeStream();
 * for (const id of ids) process.stdout.write(stream.push(id)); // never half a UTF-8 character
 * process.stdout.write(stream.flush());
 * ```
 * @module
 */

import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

import { CascadeError, InvalidArgumentError, ModelFormatError } from '../errors.js';
import { tokenizerJsonFromGguf, type AddedTokenJson, type TokenizerJson, type TokenizerSettings } from './from-gguf.js';
import { readGgufTokenizerMetadata } from './gguf-metadata.js';

/** One chat message for {@link Tokenizer.applyChatTemplate}. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  content: string;
  [key: string]: unknown;
}

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /**
   * Prepend the BOS token. Default: what the tokenizer says (`tokenizer.ggml.add_bos_token` in a
   * GGUF, else true for SentencePiece and false for byte-level BPE; for a tokenizer.json, its
   * post-processor).
   */
  addBos?: boolean;
  /** Append the EOS token (default: `tokenizer.ggml.add_eos_token`, else false). */
  addEos?: boolean;
}

/** Options of {@link Tokenizer.decode}. */
export interface DecodeOptions {
  /** Leave out special (control) tokens such as `<|im_end|>` (default false). */
  skipSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the header of an assistant turn, so the model continues as the assistant (default false). */
  addGenerationPrompt?: boolean;
  /** A template to use instead of the tokenizer's own. */
  template?: string;
  /** More variables for the template (`tools`, `documents`, ...). */
  variables?: Record<string, unknown>;
}

/**
 * Incremental detokenizer for streaming: push token ids as they are generated and get the text
 * they add. Text is only released once it is complete, so a multi-byte UTF-8 character split
 * across tokens (an emoji in byte-level BPE, `<0xF0><0x9F>...` byte fallback) never comes out as
 * U+FFFD halves, and tokenizer rules that look at neighbours (SentencePiece's leading-space strip)
 * give exactly what {@link Tokenizer.decode} gives for the whole sequence:
 * `pieces.join('') === tok.decode(ids)`.
 *
 * (The prefix/read-offset scheme of Hugging Face text-generation-inference.)
 */
export class TokenStreamDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly options: DecodeOptions = {},
  ) {}

  /** Adds one token (or several) and returns the text that is now complete ('' if none). */
  push(ids: number | readonly number[]): string {
    if (typeof ids === 'number') this.ids.push(ids);
    else this.ids.push(...ids);
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.options);
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.options);
    if (full.length > prefix.length && !full.endsWith('\uFFFD') && full.startsWith(prefix)) {
      const text = full.slice(prefix.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return text;
    }
    return '';
  }

  /** The text still held back (an incomplete character at the very end decodes as U+FFFD). */
  flush(): string {
    const prefix = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.options);
    const full = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.options);
    this.prefixOffset = this.readOffset = this.ids.length;
    return full.startsWith(prefix) ? full.slice(prefix.length) : '';
  }

  /** All ids pushed so far. */
  get tokens(): readonly number[] {
    return this.ids;
  }
}

interface TokenizerState {
  hf: HfTokenizer;
  json: TokenizerJson;
  settings: TokenizerSettings;
  /** Whether BOS/EOS are added by us (GGUF) or by the tokenizer.json's post-processor. */
  ownPostProcessing: boolean;
  source: string;
}

function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') {
    return (v as { content: string }).content;
  }
  return undefined;
}

async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read ${what} ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * `@huggingface/tokenizers` checks a tokenizer.json as it builds it and throws plain Errors and
 * TypeErrors (an unknown normalizer type, a missing vocab): those mean the file is bad.
 */
function buildHf(json: TokenizerJson, config: Record<string, unknown>, path: string): HfTokenizer {
  try {
    return new HfTokenizer(json, config);
  } catch (e) {
    throw new ModelFormatError(`${path}: not a usable tokenizer: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  }
}

/** A text tokenizer: encode, decode (also incrementally), chat templates. */
export class Tokenizer {
  private readonly hf: HfTokenizer;
  private readonly settings: TokenizerSettings;
  private readonly ownPostProcessing: boolean;
  private readonly specialIds: Set<number>;
  private compiledTemplate: { source: string; template: Template } | undefined;
  /** Where it was loaded from (a file path). */
  readonly source: string;
  /** The BOS token id, if the tokenizer has one. */
  readonly bosId: number | undefined;
  /** Ids that end generation (EOS, end-of-turn, ...). */
  readonly eosIds: readonly number[];
  /** Number of token ids (the model's vocabulary size, including added tokens). */
  readonly vocabSize: number;

  private constructor(state: TokenizerState) {
    this.hf = state.hf;
    this.settings = state.settings;
    this.ownPostProcessing = state.ownPostProcessing;
    this.source = state.source;
    this.bosId = state.settings.bosTokenId;
    this.eosIds = Object.freeze([...state.settings.eosTokenIds]);
    let max = -1;
    const vocab = state.json.model.vocab as unknown;
    if (Array.isArray(vocab)) max = vocab.length - 1; // Unigram: [piece, score] pairs, the id is the position
    else if (vocab !== null && typeof vocab === 'object') for (const id of Object.values(vocab)) if (typeof id === 'number' && id > max) max = id;
    for (const t of state.json.added_tokens) if (t.id > max) max = t.id;
    this.vocabSize = max + 1;
    this.specialIds = new Set(state.json.added_tokens.filter((t) => t.special).map((t) => t.id));
  }

  /**
   * The tokenizer embedded in a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
   *
   * @throws ModelFormatError when the file is not a GGUF or carries no tokenizer.
   * @throws InvalidArgumentError for an unsupported tokenizer type.
   */
  static async fromGguf(path: string): Promise<Tokenizer> {
    const meta = await readGgufTokenizerMetadata(path);
    const { json, settings } = tokenizerJsonFromGguf(meta);
    const hf = buildHf(json, { clean_up_tokenization_spaces: false }, path);
    return new Tokenizer({ hf, json, settings, ownPostProcessing: true, source: path });
  }

  /**
   * A Hugging Face `tokenizer.json`. Settings (special tokens, `add_bos_token`, `chat_template`,
   * `clean_up_tokenization_spaces`) come from `tokenizer_config.json` in the same folder when it
   * exists; `config` overrides it.
   */
  static async fromTokenizerJson(path: string, config?: Record<string, unknown>): Promise<Tokenizer> {
    const json = (await readJson(path, 'tokenizer.json')) as TokenizerJson;
    if (json === null || typeof json !== 'object' || typeof json.model !== 'object') {
      throw new ModelFormatError(`${path} is not a tokenizer.json (no "model")`);
    }
    json.added_tokens ??= [];
    const added = json.added_tokens as unknown[];
    if (!Array.isArray(added) || !added.every((t) => t !== null && typeof t === 'object' && Number.isSafeInteger((t as AddedTokenJson).id) && (t as AddedTokenJson).id >= 0 && typeof (t as AddedTokenJson).content === 'string')) {
      throw new ModelFormatError(`${path}: "added_tokens" is not a list of {id, content, ...} entries with ids >= 0`);
    }
    let cfg: Record<string, unknown> = {};
    const cfgPath = join(dirname(path), 'tokenizer_config.json');
    try {
      cfg = (await readJson(cfgPath, 'tokenizer_config.json')) as Record<string, unknown>;
    } catch (e) {
      if (!(e instanceof InvalidArgumentError)) throw e; // a missing config is fine, a broken one is not
    }
    cfg = { ...cfg, ...(config ?? {}) };
    // chat_template may also live in chat_template.jinja / .json (newer transformers)
    if (typeof cfg['chat_template'] !== 'string') {
      try {
        cfg['chat_template'] = await readFile(join(dirname(path), 'chat_template.jinja'), 'utf8');
      } catch {
        // none
      }
    }
    const hfConfig = { ...cfg, clean_up_tokenization_spaces: cfg['clean_up_tokenization_spaces'] ?? false };
    const hf = buildHf(json, hfConfig, path);
    const idOf = (v: unknown): number | undefined => {
      const s = tokenString(v);
      return s === undefined ? undefined : hf.token_to_id(s);
    };
    const eos = idOf(cfg['eos_token']);
    const model = json.model as { type?: string };
    const sentencepiece = JSON.stringify(json.pre_tokenizer ?? null).includes('Metaspace') || model.type === 'Unigram';
    const settings: TokenizerSettings = {
      bosTokenId: idOf(cfg['bos_token']),
      eosTokenIds: eos === undefined ? [] : [eos],
      unkTokenId: idOf(cfg['unk_token']),
      padTokenId: idOf(cfg['pad_token']),
      addBos: cfg['add_bos_token'] === true,
      addEos: cfg['add_eos_token'] === true,
      chatTemplate: typeof cfg['chat_template'] === 'string' ? cfg['chat_template'] : undefined,
      kind: JSON.stringify(json.decoder ?? null).includes('ByteLevel') ? 'byte-level' : sentencepiece ? 'sentencepiece' : 'other',
      addPrefixSpace: false,
    };
    return new Tokenizer({ hf, json, settings, ownPostProcessing: false, source: path });
  }

  /** `'byte-level'` (GPT-2 style BPE), `'sentencepiece'` or `'other'`. */
  get kind(): TokenizerSettings['kind'] {
    return this.settings.kind;
  }

  /** The Jinja chat template, if the tokenizer has one. */
  get chatTemplate(): string | undefined {
    return this.settings.chatTemplate;
  }

  /** The string of a token id (as the vocabulary spells it, e.g. `'Ġworld'`), or undefined. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  /** The id of a token string, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** Whether `id` is a special (control) token such as `<|im_start|>`. */
  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Text -> token ids. Special tokens written in the text (`<|im_start|>`) become their ids, as in
   * transformers and llama.cpp's chat handling.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new InvalidArgumentError('encode: text must be a string');
    const useTokenizerDefaults = !this.ownPostProcessing && options.addBos === undefined && options.addEos === undefined;
    const ids = this.guard('encode', () => this.hf.encode(text, { add_special_tokens: useTokenizerDefaults }).ids);
    if (useTokenizerDefaults) return ids;
    const addBos = options.addBos ?? this.settings.addBos;
    const addEos = options.addEos ?? this.settings.addEos;
    if (addBos) {
      if (this.bosId === undefined) throw new InvalidArgumentError(`encode: addBos, but ${this.source} has no BOS token`);
      ids.unshift(this.bosId);
    }
    if (addEos) {
      const eos = this.eosIds[0];
      if (eos === undefined) throw new InvalidArgumentError(`encode: addEos, but ${this.source} has no EOS token`);
      ids.push(eos);
    }
    return ids;
  }

  /** Token ids -> text. */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new InvalidArgumentError(`decode: token id ${id} is out of range [0, ${this.vocabSize})`);
      }
    }
    // An id in range can still have no token: a vocabulary that spells a token twice keeps only
    // the later id (as Python's dict does), and ids can skip numbers. Hugging Face's tokenizers
    // leaves such ids out of the text; tokenizers.js would decode them as its unk_token (null
    // when there is none, and then throw), so they are left out here.
    const known = ids.filter((id) => this.hf.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    return this.guard('decode', () => this.hf.decode(known, { skip_special_tokens: options.skipSpecialTokens ?? false }));
  }

  /**
   * Runs a tokenizers.js call. It built the tokenizer from our file, so an error inside it that
   * is not ours (a TypeError on a post-processor the file spells wrongly) means the file is bad.
   */
  private guard<T>(what: string, f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof CascadeError) throw e;
      throw new ModelFormatError(`${this.source}: ${what} failed inside the tokenizer (is the tokenizer file valid?): ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
  }

  /** A fresh {@link TokenStreamDecoder} for one generated sequence. */
  decodeStream(options: DecodeOptions = {}): TokenStreamDecoder {
    return new TokenStreamDecoder(this, options);
  }

  /**
   * Renders the chat template with `messages` (and `bos_token`, `eos_token`, `unk_token`,
   * `pad_token`, `add_generation_prompt`, plus `options.variables`), like transformers'
   * `apply_chat_template(..., tokenize=False)`. Encode the result with `addBos: false` when the
   * template writes the BOS itself.
   *
   * @throws InvalidArgumentError when the tokenizer has no chat template and none is given, or the
   *   template fails (its `raise_exception(...)` message is included).
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const source = options.template ?? this.settings.chatTemplate;
    if (source === undefined) {
      throw new InvalidArgumentError(`${this.source} has no chat template; pass options.template`);
    }
    let template: Template;
    if (this.compiledTemplate?.source === source) {
      template = this.compiledTemplate.template;
    } else {
      try {
        template = new Template(source);
      } catch (e) {
        throw new InvalidArgumentError(`the chat template does not parse: ${(e as Error).message}`, { cause: e });
      }
      this.compiledTemplate = { source, template };
    }
    const tok = (id: number | undefined): string | undefined => (id === undefined ? undefined : this.idToToken(id));
    try {
      return template.render({
        bos_token: tok(this.bosId) ?? '',
        eos_token: tok(this.eosIds[0]) ?? '',
        unk_token: tok(this.settings.unkTokenId) ?? '',
        pad_token: tok(this.settings.padTokenId) ?? '',
        ...options.variables,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: options.addGenerationPrompt ?? false,
      });
    } catch (e) {
      throw new InvalidArgumentError(`rendering the chat template failed: ${(e as Error).message}`, { cause: e });
    }
  }
}
