// Model oracles: cascade-xla's programs against Hugging Face transformers (torch 2.13.0 CPU,
// float32) in the oracle venv (scripts/oracle-env.mjs --with-torch).
//
// (a) Random-weight checkpoints built by test/oracle/hf_random_models.py (Llama GQA tied and
//     untied, a Llama with a non-default RoPE base, Gemma MQA with head_dim != hidden/heads),
//     saved with save_pretrained(safetensors) plus a word-level tokenizer.json: one prefill
//     (Cascade.evaluate, also in power-of-two chunks) against the model's logits, and greedy
//     step-by-step decoding (generate, modes 'target' and 'speculative') against model.generate.
//     bf16 targets against the same f32 logits, within the tolerance of docs/precision.md.
// (b) The default SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to f32 by transformers
//     (test/oracle/hf_gguf_model.py): logits of a prompt and 32-token greedy continuations.
//     Token ids are ours on both sides, so this checks the model, not the tokenizer.
//
// The Python side runs as two processes started at once (the GGUF one takes ~1-2 min on a
// 2-core machine and runs while the random models are checked).
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, cpSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Cascade, type Precision } from '../src/cascade/cascade.js';
import { ensureDefaultModel } from '../src/models/default-model.js';
import { Tokenizer } from '../src/tokenizer/index.js';

const ROOT = join(import.meta.dirname, '..');
const SETUP_MS = 900_000; // a fresh machine builds the oracle venv (~1.5 min) and downloads the model
const MODEL_MS = 600_000; // XLA compiles of the 30-layer SmolLM2 programs (5-13 s each on 2 cores)

/** f32 logits, random models: max |ours - transformers| (measured ~1.5e-5, see docs/precision.md). */
const F32_TOL = 1e-3;
/** f32 logits, SmolLM2 (30 layers; measured ~1.3e-4). */
const SMOL_F32_TOL = 1e-2;
/**
 * bf16 target (bf16 weights and KV cache, bf16 activations in the prefill dot products) against
 * the f32 reference, random models whose logits spread ~3 (|max| ~12-14): measured <= 0.23.
 */
const BF16_TOL = 0.5;
/** Greedy references must not hinge on a near-tie: smallest top-1/top-2 gap over all steps. */
const RANDOM_MIN_MARGIN = 0.1;
const SMOL_MIN_MARGIN = 0.01;

let pythonPath: string | undefined;
function oraclePython(): string {
  pythonPath ??= execFileSync(process.execPath, [join(ROOT, 'scripts/oracle-env.mjs'), '--with-torch'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    timeout: SETUP_MS,
  }).trim();
  return pythonPath;
}

/** Runs an oracle script with one JSON request on stdin; resolves with its JSON answer. */
function oracle(script: string, request: unknown): Promise<any> {
  return new Promise((resolve, reject) => {
    const child = spawn(oraclePython(), [join(ROOT, 'test/oracle', script)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, HF_HUB_OFFLINE: '1', TRANSFORMERS_VERBOSITY: 'error', TQDM_DISABLE: '1' },
    });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), MODEL_MS);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-8000)));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`${script} exited with ${code ?? signal}:\n${err}`));
      try {
        resolve(JSON.parse(Buffer.concat(out).toString('utf8')));
      } catch (e) {
        reject(new Error(`${script} printed no JSON: ${(e as Error).message}\n${err}`));
      }
    });
    child.stdin.end(JSON.stringify(request));
  });
}

/** Largest |a[i] - b[i]| and where: [max, row, column] for rows of `width`. */
function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>, width: number): { max: number; row: number; col: number } {
  expect(a.length).toBe(b.length);
  let max = 0;
  let at = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= max)) {
      max = d; // NaN sticks
      at = i;
      if (Number.isNaN(d)) break;
    }
  }
  return { max, row: Math.floor(at / width), col: at % width };
}

const describeDiff = (d: { max: number; row: number; col: number }) => `max |diff| ${d.max.toExponential(3)} at position ${d.row}, token ${d.col}`;

const tempDirs: string[] = [];
function tempDir(tag: string): string {
  const d = mkdtempSync(join(tmpdir(), `cascade-oracle-${tag}-`));
  tempDirs.push(d);
  return d;
}

interface RandomModel {
  name: string;
  dir: string;
  vocab: number;
  seq: number[];
  logits: number[];
  logits_bf16w: number[];
  logits_absmax: number;
  prompt: number[];
  prompt_text: string;
  greedy: number[];
  greedy_margin: number;
}

interface SmolReference {
  greedy: number[][];
  margins: number[];
  min_margin_at: [number, number, number][];
  vocab: number;
  logits_shape: [number, number];
  load_s: number;
  loader: string;
}

/**
 * Prompts of 9 and 17 tokens (power-of-two catch-up chunks: fewer programs to compile) whose
 * greedy continuations have no near-tie (smallest top-2 gaps in transformers: 0.051, 0.135, 0.209;
 * "The capital of France is Paris. The capital of Germany is" has one of 0.004 and is not used).
 */
const SMOL_PROMPTS = [
  'The three primary colors are red, yellow and',
  'def add(a, b):\n    return',
  'Once upon a time, in a small village by the sea, there lived an old',
];
const SMOL_NEW_TOKENS = 32;

let randomModels: RandomModel[];
let smolGguf: string;
let smolIds: number[][];
let smolLogitsIds: number[];
let smolLogitsFile: string;
let smolJob: Promise<SmolReference>;

beforeAll(async () => {
  oraclePython();
  smolGguf = (await ensureDefaultModel({ onProgress: () => undefined })).path;
  const tok = await Tokenizer.fromGguf(smolGguf);
  smolIds = SMOL_PROMPTS.map((p) => tok.encode(p)); // as Cascade.generate encodes a string prompt
  const chat = tok.applyChatTemplate([{ role: 'user', content: 'What is the tallest mountain in the world? Answer in one sentence.' }], {
    addGenerationPrompt: true,
  });
  smolLogitsIds = tok.encode(chat, { addBos: false }).slice(0, 32); // one 32-token prefill chunk
  smolLogitsFile = join(tempDir('smol'), 'logits.f32');
  // Started now, awaited by the SmolLM2 tests: it runs while the random models are checked.
  smolJob = oracle('hf_gguf_model.py', {
    gguf: smolGguf,
    prompts: smolIds,
    new_tokens: SMOL_NEW_TOKENS,
    logits_prompt: smolLogitsIds,
    logits_out: smolLogitsFile,
  });
  smolJob.catch(() => undefined); // reported by the tests that await it
  const answer = await oracle('hf_random_models.py', {
    out_dir: tempDir('random'),
    seq_len: 32,
    prompt_len: 9, // one catch-up chunk of 8 + the first step: fewer programs to compile
    new_tokens: 16,
    min_margin: RANDOM_MIN_MARGIN,
  });
  randomModels = answer.models;
}, SETUP_MS);

afterAll(async () => {
  await smolJob?.catch(() => undefined);
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

function model(name: string): RandomModel {
  const m = randomModels.find((x) => x.name === name);
  if (!m) throw new Error(`hf_random_models.py made no model ${name}`);
  return m;
}

const loadRandom = (dir: string, target: Precision) => Cascade.load({ target: dir, precision: { target, draft: 'f32' }, maxContext: 64 });

describe.each(['llama-gqa-tied', 'llama-gqa-untied', 'gemma-mqa'])('random %s vs transformers', (name) => {
  let m: RandomModel;
  let c: Cascade;
  beforeAll(async () => {
    m = model(name);
    c = await loadRandom(m.dir, 'f32');
  }, MODEL_MS);
  afterAll(async () => {
    await c?.dispose();
  });

  it('f32 prefill: evaluate() logits of 32 random tokens within 1e-3', async () => {
    const ours = await c.evaluate(m.seq);
    const d = maxAbsDiff(ours, m.logits, m.vocab);
    console.log(`${name} f32: ${describeDiff(d)} (logits |max| ${m.logits_absmax.toFixed(2)})`);
    expect(d.max, describeDiff(d)).toBeLessThanOrEqual(F32_TOL);
    // 24 tokens: chunks of 16 + 8 (the second chunk reads the keys/values the first one wrote).
    const part = await c.evaluate(m.seq.slice(0, 24));
    const dp = maxAbsDiff(part, m.logits.slice(0, 24 * m.vocab), m.vocab);
    expect(dp.max, `chunked prefill: ${describeDiff(dp)}`).toBeLessThanOrEqual(F32_TOL);
  });

  it('f32 step by step: greedy generate() (target and speculative) equals model.generate', async () => {
    expect(m.greedy_margin).toBeGreaterThanOrEqual(RANDOM_MIN_MARGIN);
    expect(c.tokenizer.encode(m.prompt_text)).toEqual(m.prompt);
    const opts = { temperature: 0, maxTokens: m.greedy.length, stopAtEos: false } as const;
    const target = await c.generate(m.prompt_text, { ...opts, mode: 'target' });
    expect(target.tokens).toEqual(m.greedy);
    const spec = await c.generate(m.prompt_text, { ...opts, mode: 'speculative' });
    expect(spec.tokens).toEqual(m.greedy);
  });

  it(`bf16 target: evaluate() within ${BF16_TOL} of the f32 logits`, async () => {
    await using b = await loadRandom(m.dir, 'bf16');
    expect(b.info.targetPrecision).toBe('bf16');
    const ours = await b.evaluate(m.seq);
    const d = maxAbsDiff(ours, m.logits, m.vocab);
    const dw = maxAbsDiff(ours, m.logits_bf16w, m.vocab);
    console.log(`${name} bf16: vs f32 ${describeDiff(d)}; vs bf16-rounded weights in f32 ${describeDiff(dw)}`);
    expect(d.max, describeDiff(d)).toBeLessThanOrEqual(BF16_TOL);
  });
});

describe('random llama with a non-default RoPE base (rope_theta 500000)', () => {
  // transformers 5 saves the RoPE base as config.json "rope_parameters": {"rope_theta": ...};
  // older versions (and most published checkpoints) as a top-level "rope_theta".
  it('rope_parameters.rope_theta (transformers 5) is read: f32 logits within 1e-3', async () => {
    const m = model('llama-rope-theta');
    await using c = await loadRandom(m.dir, 'f32');
    const d = maxAbsDiff(await c.evaluate(m.seq), m.logits, m.vocab);
    console.log(`llama-rope-theta f32 (rope_parameters only): ${describeDiff(d)}`);
    expect(d.max, describeDiff(d)).toBeLessThanOrEqual(F32_TOL);
  });

  it('the same checkpoint with a top-level "rope_theta" matches transformers (f32 logits, greedy)', async () => {
    const m = model('llama-rope-theta');
    const dir = tempDir('rope');
    cpSync(m.dir, dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    config.rope_theta = config.rope_parameters.rope_theta;
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
    await using c = await loadRandom(dir, 'f32');
    const d = maxAbsDiff(await c.evaluate(m.seq), m.logits, m.vocab);
    expect(d.max, describeDiff(d)).toBeLessThanOrEqual(F32_TOL);
    expect(m.greedy_margin).toBeGreaterThanOrEqual(RANDOM_MIN_MARGIN);
    const r = await c.generate(m.prompt_text, { temperature: 0, maxTokens: m.greedy.length, stopAtEos: false, mode: 'target' });
    expect(r.tokens).toEqual(m.greedy);
  });
});

describe('SmolLM2-135M-Instruct Q4_1 GGUF vs transformers (dequantised to f32)', () => {
  let ref: SmolReference;
  let c: Cascade;
  beforeAll(async () => {
    c = await Cascade.load({ target: smolGguf, precision: { target: 'f32', draft: 'f32' }, maxContext: 128 });
    ref = await smolJob;
    console.log(`transformers loaded the GGUF in ${ref.load_s.toFixed(1)} s (${ref.loader}); greedy margins ${ref.margins.map((x) => x.toFixed(4)).join(', ')}`);
  }, MODEL_MS);
  afterAll(async () => {
    await c?.dispose();
  });

  it('logits of a 32-token prompt within 1e-2', async () => {
    const ours = await c.evaluate(smolLogitsIds);
    const theirs = new Float32Array(readFileSync(smolLogitsFile).buffer.slice(0));
    expect(ref.logits_shape).toEqual([smolLogitsIds.length, c.info.target.vocabSize]);
    const d = maxAbsDiff(ours, theirs, ref.vocab);
    console.log(`SmolLM2 f32: ${describeDiff(d)}`);
    expect(d.max, describeDiff(d)).toBeLessThanOrEqual(SMOL_F32_TOL);
  }, MODEL_MS);

  it.each(SMOL_PROMPTS.map((p, i) => [i, p] as const))('greedy 32 tokens, modes target and speculative: prompt %i %j', async (i, prompt) => {
    // The reference must not hinge on a near-tie (else f32 rounding could legitimately flip a token).
    expect(ref.margins[i], `near-tie at step ${ref.min_margin_at[i]?.join(', ')}`).toBeGreaterThanOrEqual(SMOL_MIN_MARGIN);
    expect(c.tokenizer.encode(prompt)).toEqual(smolIds[i]);
    const opts = { temperature: 0, maxTokens: SMOL_NEW_TOKENS, stopAtEos: false } as const;
    const target = await c.generate(prompt, { ...opts, mode: 'target' });
    expect(target.tokens).toEqual(ref.greedy[i]);
    const spec = await c.generate(prompt, { ...opts, mode: 'speculative' });
    expect(spec.tokens).toEqual(ref.greedy[i]);
  }, MODEL_MS);
});
