// A bounded, seeded mutation fuzz of the tokenizer loading (Tokenizer.fromGguf and
// Tokenizer.fromTokenizerJson): small valid inputs (GGUF tokenizer metadata of the gpt2 and llama
// kinds, a tokenizer.json + tokenizer_config.json) are mutated byte-wise and structurally, loaded,
// and a loaded tokenizer is used (encode, decode, streaming decode, chat template). The rule, as in
// the C++ libFuzzer targets (cpp/fuzz): a CascadeError is the expected way to reject bad input;
// any other error, or an input that takes longer than HANG_MS, is a finding. A finding's input is
// kept under build/tokenizer-fuzz/ and the test fails naming it.
//
// Each input is loaded in a worker thread, so that an input that loops forever can be stopped
// (worker.terminate() interrupts synchronous code; a timer in this thread could not). The worker
// runs the compiled package (dist/, which `npm test`'s pretest builds).
//
//   CASCADE_TOKENIZER_FUZZ_ITERATIONS=20000 CASCADE_TOKENIZER_FUZZ_SEED=7 npx vitest run test/tokenizer-fuzz.test.ts
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CascadeError, ModelFormatError } from '../src/errors.js';
import { Tokenizer } from '../src/tokenizer/index.js';

const ROOT = path.join(import.meta.dirname, '..');
const ITERATIONS = Number(process.env.CASCADE_TOKENIZER_FUZZ_ITERATIONS ?? 1000); // per family: ~10 s each on a busy 2-core machine
const SEED = Number(process.env.CASCADE_TOKENIZER_FUZZ_SEED ?? 1);
const HANG_MS = 10_000;
const CRASH_DIR = path.join(ROOT, 'build', 'tokenizer-fuzz');

// ------------------------------------------------------------------ deterministic randomness

/** mulberry32: a small seeded PRNG, so that (seed, family, iteration) names an input exactly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
type Rand = () => number;
const hash = (s: string) => [...s].reduce((h, c) => Math.imul(h ^ c.charCodeAt(0), 0x01000193), 0x811c9dc5);
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

// ------------------------------------------------------------------ GGUF writer (metadata only)

type GgufValue =
  | { t: 'u32' | 'i32' | 'f32' | 'u8' | 'u64' | 'i64'; v: number }
  | { t: 'bool'; v: boolean }
  | { t: 'str'; v: string }
  | { t: 'arr'; of: 'str'; v: string[] }
  | { t: 'arr'; of: 'i32' | 'f32' | 'u32'; v: number[] };
const TYPE = { u8: 0, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11 } as const;

function ggufBytes(kv: Array<[string, GgufValue]>): Buffer {
  const parts: Buffer[] = [];
  const push = (n: number, write: (b: Buffer) => void) => {
    const b = Buffer.alloc(n);
    write(b);
    parts.push(b);
  };
  const u32 = (v: number) => push(4, (b) => b.writeUInt32LE(v >>> 0));
  const u64 = (v: number) => push(8, (b) => b.writeBigUInt64LE(BigInt(v)));
  const str = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    u64(b.length);
    parts.push(b);
  };
  const scalar = (t: string, v: number | boolean | string) => {
    if (t === 'u32') u32(v as number);
    else if (t === 'i32') push(4, (b) => b.writeInt32LE(v as number));
    else if (t === 'f32') push(4, (b) => b.writeFloatLE(v as number));
    else if (t === 'u8') push(1, (b) => b.writeUInt8(v as number));
    else if (t === 'u64') u64(v as number);
    else if (t === 'i64') push(8, (b) => b.writeBigInt64LE(BigInt(v as number)));
    else if (t === 'bool') push(1, (b) => b.writeUInt8(v ? 1 : 0));
    else str(v as string);
  };
  parts.push(Buffer.from('GGUF'));
  u32(3);
  u64(0); // tensors: the tokenizer reader needs none
  u64(kv.length);
  for (const [key, value] of kv) {
    str(key);
    u32(TYPE[value.t]);
    if (value.t === 'arr') {
      u32(TYPE[value.of]);
      u64(value.v.length);
      for (const x of value.v) scalar(value.of, x);
    } else {
      scalar(value.t, value.v);
    }
  }
  const head = Buffer.concat(parts);
  return Buffer.concat([head, Buffer.alloc((32 - (head.length % 32)) % 32)]);
}

const CHAT_TEMPLATE =
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" +
  '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}';

/** Valid tokenizer metadata: a byte-level BPE (gpt2) or a SentencePiece BPE (llama / gemma). */
function seedGguf(kind: 'gpt2' | 'llama' | 'gemma'): Array<[string, GgufValue]> {
  if (kind === 'gpt2') {
    const tokens = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', 'h', 'e', 'l', 'o', 'w', 'r', 'd', 'Ġ', 'he', 'll', 'hell', 'hello', 'Ġw', 'Ġworld', 'or', 'ld'];
    return [
      ['general.architecture', { t: 'str', v: 'llama' }],
      ['tokenizer.ggml.model', { t: 'str', v: 'gpt2' }],
      ['tokenizer.ggml.pre', { t: 'str', v: 'smollm' }],
      ['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: tokens }],
      ['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: tokens.map((_, i) => (i < 3 ? 3 : 1)) }],
      ['tokenizer.ggml.merges', { t: 'arr', of: 'str', v: ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'o r', 'l d', 'Ġw or', 'Ġwor ld'] }],
      ['tokenizer.ggml.bos_token_id', { t: 'u32', v: 1 }],
      ['tokenizer.ggml.eos_token_id', { t: 'u32', v: 2 }],
      ['tokenizer.ggml.padding_token_id', { t: 'u32', v: 0 }],
      ['tokenizer.ggml.add_bos_token', { t: 'bool', v: false }],
      ['tokenizer.chat_template', { t: 'str', v: CHAT_TEMPLATE }],
    ];
  }
  const bytes = Array.from({ length: 8 }, (_, i) => `<0x${(0x41 + i).toString(16).toUpperCase()}>`);
  const tokens = ['<unk>', '<s>', '</s>', ...bytes, '▁', 'h', 'e', 'l', 'o', '▁h', 'll', '▁he', '▁hell', '▁hello', 'w', 'r', 'd', kind === 'gemma' ? '  ' : '▁w'];
  const types = tokens.map((t, i) => (i === 0 ? 2 : i < 3 ? 3 : t.startsWith('<0x') ? 6 : 1));
  return [
    ['general.architecture', { t: 'str', v: kind === 'gemma' ? 'gemma2' : 'llama' }],
    ['tokenizer.ggml.model', { t: 'str', v: 'llama' }],
    ['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: tokens }],
    ['tokenizer.ggml.scores', { t: 'arr', of: 'f32', v: tokens.map((_, i) => -i) }],
    ['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: types }],
    ['tokenizer.ggml.bos_token_id', { t: 'u32', v: 1 }],
    ['tokenizer.ggml.eos_token_id', { t: 'u32', v: 2 }],
    ['tokenizer.ggml.unknown_token_id', { t: 'u32', v: 0 }],
    ['tokenizer.ggml.add_space_prefix', { t: 'bool', v: true }],
  ];
}

// ------------------------------------------------------------------ mutators

const INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 12, 13, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff];
const BIG = [0n, 1n, 0xffn, 0x7fffffffn, 0xffffffffn, 0x100000000n, 1n << 40n, 0x7fffffffffffffffn, 0xffffffffffffffffn];

/** libFuzzer-style byte mutations: flips, interesting values, u32/u64 fields, cuts, splices. */
function mutateBytes(r: Rand, input: Buffer): Buffer {
  let b = Buffer.from(input);
  const rounds = 1 + int(r, 4);
  for (let k = 0; k < rounds; k++) {
    const at = b.length ? int(r, b.length) : 0;
    switch (int(r, 8)) {
      case 0: // bit flip
        if (b.length) b[at]! ^= 1 << int(r, 8);
        break;
      case 1: // random byte
        if (b.length) b[at] = int(r, 256);
        break;
      case 2: // interesting u32 (counts, types, lengths)
        if (at + 4 <= b.length) b.writeUInt32LE(pick(r, INTERESTING) >>> 0, at);
        break;
      case 3: // interesting u64 (string lengths, array counts)
        if (at + 8 <= b.length) b.writeBigUInt64LE(pick(r, BIG), at);
        break;
      case 4: // truncate
        b = b.subarray(0, at);
        break;
      case 5: // delete a run
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + int(r, 16))]);
        break;
      case 6: // duplicate a run
        b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + 1 + int(r, 32)), b.subarray(at)]);
        break;
      default: // random bytes inserted
        b = Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + int(r, 8) }, () => int(r, 256))), b.subarray(at)]);
    }
  }
  return b;
}

const WEIRD_STRINGS = ['', ' ', '▁', '__proto__', 'constructor', '<unk>', '<0xZZ>', '<0xFF>', '\u0000', '\uD800', '🤗', 'a'.repeat(300), 'h e', 'x', 'hello'];
const WEIRD_NUMBERS = [0, -1, 1, 2, 18, 19, 20, 255, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 1e300, -1e300, 0.5, NaN, Infinity, -Infinity];

/** Structural GGUF mutations: drop or retype keys, out-of-range ids, arrays of the wrong length. */
function mutateGgufKv(r: Rand, kv: Array<[string, GgufValue]>): Array<[string, GgufValue]> {
  const out = kv.map(([k, v]) => [k, { ...v, v: Array.isArray(v.v) ? [...v.v] : v.v }] as [string, GgufValue]);
  const rounds = 1 + int(r, 3);
  for (let k = 0; k < rounds && out.length; k++) {
    const i = int(r, out.length);
    const [key, value] = out[i]!;
    switch (int(r, 8)) {
      case 0:
        out.splice(i, 1);
        break;
      case 1: // another type under the same key
        out[i] = [
          key,
          pick(r, [
            { t: 'u32', v: pick(r, INTERESTING) },
            { t: 'i32', v: pick(r, [-1, 0, 1, 2 ** 31 - 1]) },
            { t: 'f32', v: pick(r, WEIRD_NUMBERS) },
            { t: 'bool', v: r() < 0.5 },
            { t: 'str', v: pick(r, WEIRD_STRINGS) },
            { t: 'arr', of: 'str', v: [pick(r, WEIRD_STRINGS)] },
            { t: 'arr', of: 'i32', v: [pick(r, [-1, 0, 3, 6, 99])] },
            { t: 'arr', of: 'f32', v: [] },
            { t: 'u64', v: pick(r, [0, 1, 2 ** 53]) },
            { t: 'i64', v: pick(r, [-1, 0, 2 ** 40]) },
          ] as GgufValue[]),
        ];
        break;
      case 2: // an array entry changed, dropped or added
        if (value.t === 'arr') {
          const arr = value.v as unknown[];
          const j = int(r, Math.max(1, arr.length));
          const x = value.of === 'str' ? pick(r, WEIRD_STRINGS) : pick(r, WEIRD_NUMBERS.filter(Number.isFinite).map((n) => (value.of === 'f32' ? n : Math.trunc(n) | 0)));
          const op = int(r, 3);
          if (op === 0) arr[j] = x;
          else if (op === 1) arr.splice(j, 1);
          else arr.splice(j, 0, x);
        }
        break;
      case 3: // ids anywhere, including out of range
        if (/token_id$/.test(key)) out[i] = [key, { t: pick(r, ['u32', 'i32'] as const), v: pick(r, [-1, 0, 1, 2, 18, 19, 20, 28, 29, 2 ** 31 - 1]) }];
        break;
      case 4: // tokenizer kind / pre-tokenizer / architecture
        if (value.t === 'str') out[i] = [key, { t: 'str', v: pick(r, ['gpt2', 'llama', 'bert', 't5', 'rwkv', '', 'llama-bpe', 'qwen2', 'gemma', 'gemma3', 'tekken', pick(r, WEIRD_STRINGS)]) }];
        break;
      case 5: // a key repeated with another value
        out.splice(int(r, out.length + 1), 0, [key, { t: 'str', v: pick(r, WEIRD_STRINGS) }]);
        break;
      case 6: // chat template: broken Jinja
        out.push(['tokenizer.chat_template', { t: 'str', v: pick(r, ['{% for %}', '{{ raise_exception("no") }}', '{{ messages[99].content }}', '{% if %}{% endif', '{{ 1/0 }}', CHAT_TEMPLATE]) }]);
        break;
      default: // merges that name unknown tokens or are not pairs
        out.push(['tokenizer.ggml.merges', { t: 'arr', of: 'str', v: [pick(r, ['h e', 'he', 'q z', ' ', '', 'a b c', 'Ġ Ġ', 'hello x'])] }]);
    }
  }
  return out;
}

function seedTokenizerJson(): { tok: any; cfg: any } {
  const vocab: Record<string, number> = { '<|endoftext|>': 0, '<|im_start|>': 1, '<|im_end|>': 2, h: 3, e: 4, l: 5, o: 6, Ġ: 7, he: 8, ll: 9, hell: 10, hello: 11, w: 12, Ġw: 13 };
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    tok: {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [special(0, '<|endoftext|>'), special(1, '<|im_start|>'), special(2, '<|im_end|>')],
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [['h', 'e'], ['l', 'l'], ['he', 'll'], ['hell', 'o'], ['Ġ', 'w']] },
    },
    cfg: { bos_token: '<|im_start|>', eos_token: { content: '<|im_end|>' }, pad_token: '<|endoftext|>', add_bos_token: false, chat_template: CHAT_TEMPLATE },
  };
}

const JSON_VALUES: unknown[] = [null, true, 0, -1, 1.5, 2 ** 53, 1e308, NaN, '', 'BPE', 'WordPiece', 'Unigram', 'WordLevel', 'Metaspace', 'Sequence', 'ByteLevel', 'Split', 'Replace', 'Strip', '__proto__', [], [null], [1, 2], {}, { type: 'nope' }, { type: 'Sequence' }, { type: 'Metaspace' }, { type: 'Split' }, { type: 'Replace' }, { type: 'BertPreTokenizer' }, { type: 'TemplateProcessing' }, { type: 'Unigram' }, { type: 'WordPiece' }, { String: 'x' }, { Regex: '(' }, { Regex: '(a+)+$' }];

/** Structural JSON mutation: a random node replaced, deleted or given an extra key. */
function mutateJson(r: Rand, root: any): any {
  const copy = JSON.parse(JSON.stringify(root));
  const rounds = 1 + int(r, 3);
  for (let k = 0; k < rounds; k++) {
    // Walk down a random path.
    let parent: any = null;
    let key: string | number | null = null;
    let node: any = copy;
    const depth = int(r, 6);
    for (let d = 0; d < depth && node !== null && typeof node === 'object'; d++) {
      const keys: Array<string | number> = Array.isArray(node) ? node.map((_: unknown, i: number) => i) : Object.keys(node);
      if (!keys.length) break;
      parent = node;
      key = pick(r, keys);
      node = node[key];
    }
    if (parent === null || key === null) continue;
    const op = int(r, 4);
    if (op === 0) {
      if (Array.isArray(parent)) parent.splice(Number(key), 1);
      else delete parent[key];
    } else if (op === 1 && node !== null && typeof node === 'object' && !Array.isArray(node)) {
      node[pick(r, ['type', 'vocab', 'merges', 'id', 'content', 'pattern', 'decoders', 'pretokenizers', 'unk_token', 'special', 'replacement'])] = structuredClone(pick(r, JSON_VALUES));
    } else {
      parent[key] = structuredClone(pick(r, JSON_VALUES));
    }
  }
  return copy;
}

// ------------------------------------------------------------------ the worker that loads inputs

// Plain JS (eval'd): it imports the compiled package. A result is one of
// ok | typed (a CascadeError) | untyped (anything else), with the error's class, message, stack.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const path = require('node:path');
(async () => {
  const { Tokenizer } = await import(workerData.tokenizerUrl);
  const { CascadeError } = await import(workerData.errorsUrl);
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'cascade-tokfuzz-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  parentPort.on('message', async (m) => {
    let stage = 'load';
    try {
      let tok;
      if (m.kind === 'gguf') {
        const p = path.join(dir, 'in.gguf');
        fs.writeFileSync(p, m.gguf);
        tok = await Tokenizer.fromGguf(p);
      } else {
        const sub = path.join(dir, 'json');
        fs.rmSync(sub, { recursive: true, force: true });
        fs.mkdirSync(sub);
        fs.writeFileSync(path.join(sub, 'tokenizer.json'), m.tokenizerJson);
        if (m.configJson !== undefined) fs.writeFileSync(path.join(sub, 'tokenizer_config.json'), m.configJson);
        tok = await Tokenizer.fromTokenizerJson(path.join(sub, 'tokenizer.json'));
      }
      // Use what loaded: the same rule holds for every call.
      for (const text of ['hello world', '', ' hello<|im_end|>', 'Héllo 🤗 \\u0000 ABC\\n\\t']) {
        stage = 'encode';
        const ids = tok.encode(text);
        stage = 'decode';
        tok.decode(ids);
        tok.decode(ids, { skipSpecialTokens: true });
        stage = 'decodeStream';
        const s = tok.decodeStream();
        for (const id of ids) s.push(id);
        s.flush();
      }
      stage = 'decode every id';
      const all = Array.from({ length: Math.min(tok.vocabSize, 4096) }, (_, i) => i);
      tok.decode(all);
      for (const id of all.slice(0, 64)) tok.idToToken(id);
      stage = 'applyChatTemplate';
      if (tok.chatTemplate !== undefined) tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { addGenerationPrompt: true });
      parentPort.postMessage({ id: m.id, outcome: 'ok' });
    } catch (e) {
      const typed = e instanceof CascadeError;
      parentPort.postMessage({ id: m.id, outcome: typed ? 'typed' : 'untyped', stage, name: e?.constructor?.name ?? typeof e, message: String(e?.message ?? e).slice(0, 500), stack: String(e?.stack ?? '').split('\\n').slice(0, 8).join('\\n') });
    }
  });
  parentPort.postMessage({ ready: true });
})().catch((e) => parentPort.postMessage({ fatal: String(e?.stack ?? e) }));
`;

interface Result {
  outcome: 'ok' | 'typed' | 'untyped' | 'hang';
  stage?: string;
  name?: string;
  message?: string;
  stack?: string;
  ms: number;
}

class Loader {
  private worker: Worker | undefined;
  private seq = 0;

  private async start(): Promise<Worker> {
    const w = new Worker(WORKER, {
      eval: true,
      workerData: {
        tokenizerUrl: pathToFileURL(path.join(ROOT, 'dist', 'tokenizer', 'index.js')).href,
        errorsUrl: pathToFileURL(path.join(ROOT, 'dist', 'errors.js')).href,
      },
    });
    await new Promise<void>((resolve, reject) => {
      w.once('message', (m) => (m.ready ? resolve() : reject(new Error(`tokenizer fuzz worker: ${m.fatal}`))));
      w.once('error', reject);
    });
    return w;
  }

  async load(input: { kind: 'gguf'; gguf: Buffer } | { kind: 'json'; tokenizerJson: string; configJson?: string }): Promise<Result> {
    this.worker ??= await this.start();
    const w = this.worker;
    const id = ++this.seq;
    const t0 = performance.now();
    return new Promise<Result>((resolve) => {
      const onMessage = (m: any) => {
        if (m.id !== id) return;
        clearTimeout(timer);
        w.off('message', onMessage);
        resolve({ ...m, ms: performance.now() - t0 });
      };
      const timer = setTimeout(() => {
        w.off('message', onMessage);
        void w.terminate();
        this.worker = undefined;
        resolve({ outcome: 'hang', ms: performance.now() - t0 });
      }, HANG_MS);
      w.on('message', onMessage);
      w.postMessage({ ...input, id });
    });
  }

  async close(): Promise<void> {
    await this.worker?.terminate();
    this.worker = undefined;
  }
}

// ------------------------------------------------------------------ the runs

interface Finding {
  family: string;
  iteration: number;
  result: Result;
  file: string;
}

function save(family: string, iteration: number, ext: string, bytes: Buffer | string): string {
  mkdirSync(CRASH_DIR, { recursive: true });
  const file = path.join(CRASH_DIR, `${family}-seed${SEED}-${iteration}.${ext}`);
  writeFileSync(file, bytes);
  return file;
}

function report(findings: Finding[], counts: Record<string, number>, ms: number[]): string {
  const slowest = ms.indexOf(Math.max(...ms));
  const sorted = [...ms].sort((a, b) => a - b);
  const lines = [
    `outcomes ${JSON.stringify(counts)}, per input median ${sorted[sorted.length >> 1]?.toFixed(1)} ms, slowest ${ms[slowest]?.toFixed(0)} ms (iteration ${slowest})`,
  ];
  // One line per distinct finding (class + stage + first frame), with its first reproducer.
  const seen = new Set<string>();
  for (const f of findings) {
    const frame = f.result.stack?.split('\n')[1]?.trim() ?? '';
    const sig = `${f.result.outcome} ${f.result.name} ${f.result.stage} ${frame}`;
    if (seen.has(sig)) continue;
    seen.add(sig);
    lines.push(`${f.result.outcome.toUpperCase()} at ${f.result.stage ?? 'load'}: ${f.result.name}: ${f.result.message}\n    ${frame}\n    input ${f.file} (iteration ${f.iteration})`);
  }
  return lines.join('\n');
}

async function fuzz(loader: Loader, family: string, next: (r: Rand, i: number) => { input: Parameters<Loader['load']>[0]; save: () => string }): Promise<void> {
  const findings: Finding[] = [];
  const counts: Record<string, number> = { ok: 0, typed: 0, untyped: 0, hang: 0 };
  const ms: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    const r = rng(Math.imul(SEED, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b) ^ hash(family));
    const { input, save: keep } = next(r, i);
    const result = await loader.load(input);
    counts[result.outcome]! += 1;
    ms.push(result.ms);
    if (result.outcome === 'untyped' || result.outcome === 'hang') findings.push({ family, iteration: i, result, file: keep() });
  }
  const summary = report(findings, counts, ms);
  console.log(`tokenizer fuzz ${family}: ${ITERATIONS} inputs (seed ${SEED}); ${summary}`);
  expect(findings.length, summary).toBe(0);
}

describe('tokenizer loading under mutated inputs (seeded, bounded)', () => {
  const loader = new Loader();
  beforeAll(() => {
    // The worker runs dist/: it must be the compiled form of the sources under test.
    for (const [ts, js] of [
      ['src/tokenizer/tokenizer.ts', 'dist/tokenizer/tokenizer.js'],
      ['src/tokenizer/from-gguf.ts', 'dist/tokenizer/from-gguf.js'],
      ['src/tokenizer/gguf-metadata.ts', 'dist/tokenizer/gguf-metadata.js'],
      ['src/errors.ts', 'dist/errors.js'],
    ]) {
      const out = path.join(ROOT, js!);
      if (!existsSync(out) || statSync(out).mtimeMs < statSync(path.join(ROOT, ts!)).mtimeMs) {
        throw new Error(`${js} is missing or older than ${ts}: run npm run build:ts (npm test does) first`);
      }
    }
  });
  afterAll(() => loader.close());

  for (const kind of ['gpt2', 'llama', 'gemma'] as const) {
    it(`GGUF tokenizer metadata (${kind}): only CascadeError, no hang`, async () => {
      const kv = seedGguf(kind);
      const valid = ggufBytes(kv);
      await fuzz(loader, `gguf-${kind}`, (r, i) => {
        // Half structural (valid GGUF, odd metadata), half byte-level (broken GGUF), some both.
        const mode = int(r, 3);
        let bytes = mode === 1 ? valid : ggufBytes(mutateGgufKv(r, kv));
        if (mode !== 0) bytes = mutateBytes(r, bytes);
        return { input: { kind: 'gguf', gguf: bytes }, save: () => save(`gguf-${kind}`, i, 'gguf', bytes) };
      });
    }, 600_000);
  }

  it('tokenizer.json + tokenizer_config.json: only CascadeError, no hang', async () => {
    const { tok, cfg } = seedTokenizerJson();
    await fuzz(loader, 'tokenizer-json', (r, i) => {
      const mode = int(r, 4);
      let tokenizerJson = JSON.stringify(mode === 1 ? tok : mutateJson(r, tok));
      let configJson: string | undefined = JSON.stringify(mode === 2 ? mutateJson(r, cfg) : cfg);
      if (mode === 3) tokenizerJson = mutateBytes(r, Buffer.from(tokenizerJson)).toString('latin1');
      if (mode === 1 && r() < 0.5) configJson = r() < 0.5 ? undefined : mutateBytes(r, Buffer.from(configJson)).toString('latin1');
      return {
        input: { kind: 'json', tokenizerJson, configJson },
        save: () => save('tokenizer-json', i, 'json', JSON.stringify({ tokenizerJson, configJson })),
      };
    });
  }, 600_000);
});

// ------------------------------------------------------------------ what the fuzz found

// Each case is a finding of the loop above, as a fixed input, run in this thread against src/.
describe('tokenizer fuzz findings (regressions)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'cascade-tokfuzz-reg-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, bytes: Buffer | string) => {
    const p = path.join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  const rejects = async (p: Promise<unknown>, needles: string[]) => {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e, 'expected a ModelFormatError').toBeInstanceOf(ModelFormatError);
    for (const n of needles) expect((e as Error).message).toContain(n);
  };
  const withKv = (kind: 'gpt2' | 'llama' | 'gemma', edit: (kv: Array<[string, GgufValue]>) => void) => {
    const kv = seedGguf(kind);
    edit(kv);
    return ggufBytes(kv);
  };

  it('a token id stored as a float (padding_token_id 0.5) is treated as absent (was: TypeError in inByteAlphabet)', async () => {
    const p = write('float-id.gguf', withKv('gpt2', (kv) => kv.push(['tokenizer.ggml.unknown_token_id', { t: 'f32', v: 0.5 }])));
    const tok = await Tokenizer.fromGguf(p);
    expect(tok.decode(tok.encode('hello world'))).toBe('hello world');
  });

  it('a token whose length runs past the end of the file is ModelFormatError, at once (was: a 400,000-character token, then minutes in generateMerges)', async () => {
    const b = withKv('gemma', () => {});
    // The length of '▁hello' (8 bytes) made 400,000: the reader sees zeros past the end of the file.
    const at = b.indexOf(Buffer.from('▁hello', 'utf8')) - 8;
    expect(b.readBigUInt64LE(at)).toBe(8n);
    b.writeBigUInt64LE(400_000n, at);
    const p = write('long-token.gguf', b);
    const t0 = performance.now();
    await rejects(Tokenizer.fromGguf(p), [p, 'tokenizer.ggml.tokens', `the file has ${b.length}`]);
    expect(performance.now() - t0).toBeLessThan(2_000);
  });

  it('a header declaring more tensors than the file holds is ModelFormatError, at once (was: 18 s reading zeros, then a RangeError)', async () => {
    const b = Buffer.alloc(16); // magic, version 3, the tensor count; the metadata count is cut off
    b.write('GGUF', 0, 'latin1');
    b.writeUInt32LE(3, 4);
    b.writeBigUInt64LE(8_060_928n, 8);
    const p = write('many-tensors.gguf', b);
    const t0 = performance.now();
    await rejects(Tokenizer.fromGguf(p), [p, '8060928 tensors', '16 bytes']);
    expect(performance.now() - t0).toBeLessThan(2_000);
  });

  it('a long token in a file that does hold it loads in bounded time (generateMerges only tries splits into tokens that exist)', async () => {
    const long = 'h'.repeat(30_000);
    const p = write('long-real.gguf', withKv('llama', (kv) => {
      const tokens = kv.find(([k]) => k === 'tokenizer.ggml.tokens')![1].v as string[];
      tokens.push(long);
      (kv.find(([k]) => k === 'tokenizer.ggml.scores')![1].v as number[]).push(-100);
      (kv.find(([k]) => k === 'tokenizer.ggml.token_type')![1].v as number[]).push(1);
    }));
    const t0 = performance.now();
    const tok = await Tokenizer.fromGguf(p);
    expect(performance.now() - t0).toBeLessThan(5_000);
    expect(tok.tokenToId(long)).toBe(25);
  });

  it('an id whose token is spelled again later decodes to nothing, as in Hugging Face tokenizers (was: TypeError in the Replace decoder)', async () => {
    const p = write('dup.gguf', withKv('llama', (kv) => {
      const tokens = kv.find(([k]) => k === 'tokenizer.ggml.tokens')![1].v as string[];
      tokens[tokens.length - 1] = 'h'; // id 24 spells 'h' again: id 12 has no token left
    }));
    const tok = await Tokenizer.fromGguf(p);
    expect(tok.tokenToId('h')).toBe(24);
    expect(tok.decode([12])).toBe('');
    expect(tok.decode([12, 24])).toBe('h');
  });

  const tokenizerJson = (edit: (tok: any, cfg: any) => void) => {
    const { tok, cfg } = seedTokenizerJson();
    edit(tok, cfg);
    const sub = mkdtempSync(path.join(dir, 'json-'));
    writeFileSync(path.join(sub, 'tokenizer_config.json'), JSON.stringify(cfg));
    return write(path.relative(dir, path.join(sub, 'tokenizer.json')), JSON.stringify(tok));
  };

  it('a tokenizer.json that tokenizers.js cannot build is ModelFormatError naming the file (was: its plain Error)', async () => {
    for (const edit of [
      (t: any) => (t.normalizer = { type: 'nope' }),
      (t: any) => delete t.normalizer,
      (t: any) => (t.decoder = { type: {} }),
      (t: any) => (t.model = { type: 'Unigram' }),
    ]) {
      const p = tokenizerJson(edit);
      await rejects(Tokenizer.fromTokenizerJson(p), [p, 'not a usable tokenizer']);
    }
  });

  it('added_tokens that are not a list of {id, content} entries is ModelFormatError (was: TypeError in our constructor)', async () => {
    for (const bad of [{}, 'x', [null], [{ id: -1, content: 'a' }], [{ id: 1.5, content: 'a' }], [{ id: 3 }]]) {
      const p = tokenizerJson((t) => (t.added_tokens = bad));
      await rejects(Tokenizer.fromTokenizerJson(p), [p, 'added_tokens']);
    }
  });

  it('a post-processor spelled wrongly fails encode with ModelFormatError naming the file (was: TypeError from tokenizers.js)', async () => {
    const p = tokenizerJson((t) => (t.post_processor = { type: 'TemplateProcessing', single: 7, pair: 7, special_tokens: {} }));
    const tok = await Tokenizer.fromTokenizerJson(p);
    let e: unknown;
    try {
      tok.encode('hello');
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(ModelFormatError);
    expect(e).toBeInstanceOf(CascadeError);
    expect((e as Error).message).toContain(p);
  });
});
