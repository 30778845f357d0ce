// The OpenAI-compatible server, driven by the official `openai` client over real HTTP on
// 127.0.0.1, against the real default model (SmolLM2-135M-Instruct) on the XLA CPU plugin.
import { spawn } from 'node:child_process';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';

import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Cascade, type GenerateOptions, type GenerationResult } from '../src/cascade/cascade.js';
import { ensureDefaultModel } from '../src/models/default-model.js';
import { createServer, serve, type CascadeServer, type RequestLogEntry } from '../src/server/server.js';
import { SlotPool } from '../src/server/slots.js';
import type { ChatMessage } from '../src/tokenizer/index.js';

const MODEL = 'smollm2-test';
const cli = path.resolve(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const question = (q: string): { role: 'user'; content: string }[] => [{ role: 'user', content: q }];

let cascade: Cascade;
let server: CascadeServer;
let client: OpenAI;
const log: RequestLogEntry[] = [];

/** A client of `server` that never retries (retries would hide what the server answered). */
const clientOf = (s: CascadeServer, apiKey = 'unused') => new OpenAI({ baseURL: `${s.url}/v1`, apiKey, maxRetries: 0, timeout: 300_000 });

/** The greedy reply of the Cascade itself, without the server. */
const direct = (prompt: string | ChatMessage[], maxTokens: number): Promise<GenerationResult> => cascade.generate(prompt, { temperature: 0, maxTokens });

/** The 400 the client raised for `request`, checked for OpenAI's error shape. */
async function badRequest(request: Promise<unknown>): Promise<InstanceType<typeof OpenAI.BadRequestError>> {
  const error = await request.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OpenAI.BadRequestError);
  const e = error as InstanceType<typeof OpenAI.BadRequestError>;
  expect(e.status).toBe(400);
  expect(e.error).toMatchObject({ message: expect.any(String), type: 'invalid_request_error' });
  expect(Object.keys(e.error as object).sort()).toEqual(['code', 'message', 'param', 'type']);
  return e;
}

beforeAll(async () => {
  const { path: target } = await ensureDefaultModel();
  cascade = await Cascade.load({ target, maxContext: 256 });
  server = await serve({ cascade, port: 0, modelId: MODEL, modelAliases: ['smol-alias'], onRequestLog: (e) => log.push(e) });
  client = clientOf(server);
}, 600_000);

afterAll(async () => {
  await server?.close();
  await cascade?.dispose();
});

describe('OpenAI-compatible server', () => {
  it('binds an ephemeral port on 127.0.0.1 and lists the model', async () => {
    expect(server.port).toBeGreaterThan(0);
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    expect(models.data[0]).toMatchObject({ object: 'model', owned_by: 'cascade-xla' });
    expect((await client.models.retrieve(MODEL)).id).toBe(MODEL);
    await expect(client.models.retrieve('gpt-4o')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    // An alias is accepted in requests; responses name the model by its id.
    expect((await client.models.retrieve('smol-alias')).id).toBe(MODEL);
    const r = await client.completions.create({ model: 'smol-alias', prompt: 'Hello', max_tokens: 1, temperature: 0 });
    expect(r.model).toBe(MODEL);
  });

  it('a greedy chat completion is exactly what Cascade.generate returns, with consistent usage', async () => {
    const messages = question('What is the capital of France?');
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0 });
    const served = cascade.lastStats!;
    const d = await direct(messages, 12);
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.model).toBe(MODEL);
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0]!.message.role).toBe('assistant');
    expect(r.choices[0]!.message.content).toBe(d.text);
    expect(d.text).toMatch(/Paris/);
    expect(r.choices[0]!.finish_reason).toBe(d.stats.stopReason === 'max_tokens' ? 'length' : 'stop');
    expect(r.usage!.prompt_tokens).toBe(d.stats.promptTokens);
    expect(r.usage!.completion_tokens).toBe(d.tokens.length);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
    // cached_tokens is the generation's own figure (KV-cache prefix reuse), not a constant.
    expect(r.usage!.prompt_tokens_details!.cached_tokens).toBe(served.cachedTokens ?? 0);
    expect(r.usage!.prompt_tokens_details!.cached_tokens).toBeLessThan(r.usage!.prompt_tokens);
  });

  it('a chat that sends its history again is served from the cached prefix (cached_tokens), exactly', async () => {
    const first = question('Name a fruit.');
    const r1 = await client.chat.completions.create({ model: MODEL, messages: first, max_tokens: 8, temperature: 0 });
    const messages = [
      ...first,
      { role: 'assistant' as const, content: r1.choices[0]!.message.content! },
      { role: 'user' as const, content: 'And a vegetable?' },
    ];
    const r2 = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0 });
    const cached = r2.usage!.prompt_tokens_details!.cached_tokens!;
    expect(r2.usage!.prompt_tokens).toBeGreaterThan(r1.usage!.prompt_tokens);
    expect(cached).toBeGreaterThanOrEqual(r1.usage!.prompt_tokens - 1);
    expect(cached).toBeLessThan(r2.usage!.prompt_tokens);
    expect(r2.choices[0]!.message.content).toBe((await cascade.generate(messages, { temperature: 0, maxTokens: 8, mode: 'target' })).text);
  });

  it('max_tokens ends with finish_reason length; max_completion_tokens wins over max_tokens', async () => {
    const messages = question('Write a long story about a dragon.');
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 3, temperature: 0 });
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage!.completion_tokens).toBe(3);
    const r2 = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 9, max_completion_tokens: 4, temperature: 0 });
    expect(r2.usage!.completion_tokens).toBe(4);
    expect(r2.choices[0]!.message.content!.startsWith(r.choices[0]!.message.content!)).toBe(true);
  });

  it('streams: the deltas add up to the plain reply, then finish_reason, usage and [DONE]', async () => {
    const messages = question('Name three colours.');
    const plain = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 14, temperature: 0 });
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 14,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === MODEL)).toBe(true);
    expect(chunks[0]!.choices[0]!.delta.role).toBe('assistant');
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(plain.choices[0]!.message.content);
    expect(chunks.filter((c) => c.choices.length > 1)).toHaveLength(0);
    expect(chunks.length).toBeGreaterThan(3); // role, at least one piece of text, finish, usage
    const finishes = chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter((f) => f !== null);
    expect(finishes).toEqual([plain.choices[0]!.finish_reason]);
    const last = chunks[chunks.length - 1]!;
    expect(last.choices).toEqual([]);
    const { prompt_tokens, completion_tokens, total_tokens } = plain.usage!;
    expect(last.usage).toMatchObject({ prompt_tokens, completion_tokens, total_tokens });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);

    // Without include_usage: no usage chunk; and the raw wire format ends with [DONE].
    const res = await fetch(`${server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages, max_tokens: 14, temperature: 0, stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const body = await res.text();
    const events = body.split('\n\n').filter(Boolean);
    expect(events.every((e) => e.startsWith('data: '))).toBe(true);
    expect(events[events.length - 1]).toBe('data: [DONE]');
    const parsed = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as { usage?: unknown; choices: { delta: { content?: string } }[] });
    expect(parsed.every((p) => p.usage === undefined && p.choices.length === 1)).toBe(true);
    expect(parsed.map((p) => p.choices[0]!.delta.content ?? '').join('')).toBe(text);
  });

  it('/v1/completions continues raw text exactly as Cascade.generate does, plain, streamed and with echo', async () => {
    const prompt = 'The three primary colours are';
    const d = await direct(prompt, 10);
    const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.id).toMatch(/^cmpl-/);
    expect(r.choices[0]!.text).toBe(d.text);
    expect(r.choices[0]!.finish_reason).toBe('length');
    expect(r.usage).toMatchObject({ prompt_tokens: d.stats.promptTokens, completion_tokens: 10, total_tokens: d.stats.promptTokens + 10 });

    const stream = await client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage;
    const finishes = [];
    for await (const c of stream) {
      text += c.choices[0]?.text ?? '';
      if (c.choices[0]?.finish_reason) finishes.push(c.choices[0].finish_reason);
      if (c.usage) usage = c.usage;
    }
    expect(text).toBe(d.text);
    expect(finishes).toEqual(['length']);
    expect(usage).toMatchObject({ prompt_tokens: d.stats.promptTokens, completion_tokens: 10 });

    const echoed = await client.completions.create({ model: MODEL, prompt: [prompt], max_tokens: 10, temperature: 0, echo: true });
    expect(echoed.choices[0]!.text).toBe(prompt + d.text);
  });

  it('stop strings (a string or an array) end the reply before them, plain and streamed', async () => {
    const messages = question('What is the capital of France?');
    const d = await direct(messages, 12);
    const cut = d.text.indexOf('Paris');
    expect(cut).toBeGreaterThan(0);
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, stop: 'Paris' });
    expect(r.choices[0]!.message.content).toBe(d.text.slice(0, cut));
    expect(r.choices[0]!.finish_reason).toBe('stop');
    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, stop: ['zzz', 'Paris'], stream: true });
    let text = '';
    let finish;
    for await (const c of stream) {
      text += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(d.text.slice(0, cut));
    expect(finish).toBe('stop');
  });

  it('sampling: a seed reproduces its reply; top_k 1 is greedy; top_p 0 is greedy', async () => {
    const messages = question('Tell me a joke.');
    const ask = (extra: object) => client.chat.completions.create({ model: MODEL, messages, max_tokens: 10, ...extra }).then((r) => r.choices[0]!.message.content);
    const a = await ask({ temperature: 1.2, seed: 42 });
    const b = await ask({ temperature: 1.2, seed: 42 });
    expect(b).toBe(a);
    const greedy = (await direct(messages, 10)).text;
    expect(await ask({ temperature: 1.5, top_k: 1, seed: 3 })).toBe(greedy);
    expect(await ask({ temperature: 1.5, top_p: 0, seed: 3 })).toBe(greedy);
  });

  it('presence_penalty, frequency_penalty, repeat_penalty, repeat_last_n, min_p and logit_bias reach the sampler', async () => {
    const prompt = 'the cat the cat the cat the cat the cat';
    const greedyFirst = (await direct(prompt, 1)).tokens[0]!;
    const cases: [Record<string, unknown>, Record<string, unknown>][] = [
      [{ presence_penalty: 2 }, { presencePenalty: 2 }],
      [{ frequency_penalty: 1.5 }, { frequencyPenalty: 1.5 }],
      [{ repeat_penalty: 1.8 }, { repeatPenalty: 1.8 }],
      [{ repeat_penalty: 1.8, repeat_last_n: 0 }, { repeatPenalty: 1.8, penaltyLastN: 0 }],
      [{ logit_bias: { [greedyFirst]: -100 } }, { logitBias: { [greedyFirst]: -100 } }],
      [{ temperature: 1.5, seed: 11, min_p: 0.3 }, { temperature: 1.5, seed: 11, minP: 0.3 }],
    ];
    for (const [fields, options] of cases) {
      const r = await client.completions.create({ model: MODEL, prompt, max_tokens: 8, temperature: 0, ...fields });
      const expected = await cascade.generate(prompt, { maxTokens: 8, temperature: 0, ...options } as GenerateOptions);
      expect(r.choices[0]!.text, JSON.stringify(fields)).toBe(expected.text);
    }
    // The options change the reply (so the equalities above say they were passed, not dropped).
    const plain = (await direct(prompt, 8)).text;
    for (const [fields, options] of cases.filter(([f]) => f['repeat_last_n'] === undefined && f['min_p'] === undefined)) {
      expect((await cascade.generate(prompt, { maxTokens: 8, temperature: 0, ...options } as GenerateOptions)).text, JSON.stringify(fields)).not.toBe(plain);
    }
    const sampled = (await cascade.generate(prompt, { maxTokens: 8, temperature: 1.5, seed: 11 })).text;
    expect((await cascade.generate(prompt, { maxTokens: 8, temperature: 1.5, seed: 11, minP: 0.3 } as GenerateOptions)).text).not.toBe(sampled);
  });

  it('bad requests are 400s in OpenAI\'s error shape, and the client raises BadRequestError', async () => {
    const messages = question('Hi');
    const chat = (body: object) => client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, ...body } as never);
    expect((await badRequest(chat({ n: 2 }))).param).toBe('n');
    expect((await badRequest(chat({ model: 'gpt-4o' }))).code).toBe('model_not_found');
    const type = await badRequest(chat({ temperature: 'hot' }));
    expect(type.param).toBe('temperature');
    expect(type.code).toBe('invalid_type');
    expect((await badRequest(chat({ temperature: 5 }))).message).toMatch(/temperature.*<= 2/);
    expect((await badRequest(chat({ top_p: 1.5 }))).param).toBe('top_p');
    expect((await badRequest(chat({ seed: -1 }))).param).toBe('seed');
    expect((await badRequest(chat({ max_tokens: 0 }))).param).toBe('max_tokens');
    expect((await badRequest(chat({ stop: ['a', 'b', 'c', 'd', 'e'] }))).param).toBe('stop');
    expect((await badRequest(chat({ logit_bias: { hello: 5 } }))).param).toBe('logit_bias');
    expect((await badRequest(chat({ logit_bias: { '999999': 5 } }))).message).toMatch(/outside the vocabulary/);
    const bias = await badRequest(chat({ logit_bias: { '5': 'x' } }));
    expect([bias.param, (bias.error as { message: string }).message]).toEqual(['logit_bias[5]', "Invalid type for 'logit_bias[5]': expected a number"]);
    expect((await badRequest(chat({ logprobs: true }))).code).toBe('unsupported_parameter');
    expect((await badRequest(chat({ messages: undefined }))).message).toMatch(/Missing required parameter: 'messages'/);
    expect((await badRequest(chat({ messages: [] }))).param).toBe('messages');
    expect((await badRequest(chat({ messages: [{ role: 'robot', content: 'x' }] }))).param).toBe('messages[0].role');
    expect((await badRequest(chat({ messages: [{ role: 'user', content: 42 }] }))).param).toBe('messages[0].content');
    expect((await badRequest(chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }))).param).toBe('messages[0].content[0]');
    expect((await badRequest(chat({ stream_options: { include_usage: 'yes' } }))).param).toBe('stream_options.include_usage');
    const overflow = await badRequest(chat({ messages: question('word '.repeat(400)) }));
    expect(overflow.code).toBe('context_length_exceeded');
    expect(overflow.message).toMatch(/context holds 256 tokens/);
    expect((await badRequest(chat({ stream: true, n: 3 }))).param).toBe('n'); // a stream's errors before it starts are plain 400s
    expect((await badRequest(client.completions.create({ model: MODEL, prompt: ['a', 'b'] }))).param).toBe('prompt');
    expect((await badRequest(client.completions.create({ model: MODEL, prompt: 'a', suffix: 'b' }))).param).toBe('suffix');

    // What the client cannot send: broken JSON, a body that is no object, an unknown route.
    const post = (body: string, route = '/v1/chat/completions') =>
      fetch(`${server.url}${route}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then(async (res) => ({
        status: res.status,
        body: (await res.json()) as { error: { message: string; type: string; param: unknown; code: unknown } },
      }));
    const broken = await post('{"messages": [');
    expect(broken.status).toBe(400);
    expect(broken.body.error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_json', param: null });
    expect((await post('[1, 2]')).body.error.message).toMatch(/must be a JSON object/);
    // curl -d without a content type sends form encoding: the body is still read as JSON.
    const form = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: JSON.stringify({ prompt: 'Hello', max_tokens: 2, temperature: 0 }),
    });
    expect(form.status).toBe(200);
    expect(((await form.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(2);
    const missing = await fetch(`${server.url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe('not_found');

    // The server is fine afterwards.
    const ok = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, temperature: 0 });
    expect(ok.usage!.completion_tokens).toBeGreaterThan(0);
  });

  it('a client that aborts mid-stream aborts the generation; the server stays healthy', async () => {
    const before = { generated: cascade.stats.generatedTokens, logged: log.length };
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model: MODEL, messages: question('Write a very long story about a cat.'), max_tokens: 200, temperature: 0, stream: true },
      { signal: controller.signal },
    );
    let pieces = 0;
    const reading = (async () => {
      for await (const c of stream) {
        if (c.choices[0]?.delta.content) pieces++;
        if (pieces === 2) controller.abort();
      }
    })();
    await reading; // the openai client ends an aborted stream's iteration quietly
    expect(pieces).toBe(2);
    // The next request works and is exact.
    const messages = question('What is the capital of France?');
    const next = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0 });
    expect(next.choices[0]!.message.content).toBe((await direct(messages, 8)).text);
    // Only completed generations count in the totals: the aborted one never ran to its end.
    expect(cascade.stats.generatedTokens - before.generated).toBe(2 * next.usage!.completion_tokens);
    const aborted = log.slice(before.logged).find((e) => !e.completed);
    expect(aborted).toMatchObject({ method: 'POST', url: '/v1/chat/completions', status: 200, completed: false });
  });

  it('queued requests run in arrival order; one whose client leaves the queue never runs', async () => {
    const before = cascade.stats.generatedTokens;
    const finished: string[] = [];
    // A runs (streamed: its first chunk says it has the engine; a count goes on for its 150 tokens)...
    const a = await client.completions.create({
      model: MODEL,
      prompt: '1, 2, 3, 4, 5, 6,',
      max_tokens: 150,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const aIt = a[Symbol.asyncIterator]();
    await aIt.next();
    const aDone = (async () => {
      let tokens = 0;
      for (let r = await aIt.next(); !r.done; r = await aIt.next()) tokens = r.value.usage?.completion_tokens ?? tokens;
      finished.push('A');
      return tokens;
    })();
    // ... while B, C and D queue behind it, one after the other; B's client gives up.
    const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
    const ask = (q: string, signal?: AbortSignal) =>
      client.chat.completions.create({ model: MODEL, messages: question(q), max_tokens: 8, temperature: 0 }, signal ? { signal } : {});
    const bAbort = new AbortController();
    const b = ask('Say B.', bAbort.signal);
    await wait(150);
    const c = ask('Say C.').then((r) => (finished.push('C'), r));
    await wait(150);
    const d = ask('Say D.').then((r) => (finished.push('D'), r));
    await wait(150);
    bAbort.abort();
    await expect(b).rejects.toBeInstanceOf(OpenAI.APIUserAbortError);
    const [aTokens, cr, dr] = await Promise.all([aDone, c, d]);
    expect(finished).toEqual(['A', 'C', 'D']);
    expect(aTokens).toBe(150);
    // Only A, C and D generated: B left the queue without running.
    expect(cascade.stats.generatedTokens - before).toBe(aTokens + cr.usage!.completion_tokens + dr.usage!.completion_tokens);
    expect(cr.choices[0]!.message.content).toBe((await direct(question('Say C.'), 8)).text);
  });

  it('16 concurrent requests (plain and streamed) all complete with the right replies', async () => {
    const questions = Array.from({ length: 16 }, (_, i) => `What is ${i + 1} plus ${i + 2}?`);
    const replies = await Promise.all(
      questions.map(async (q, i) => {
        const body = { model: MODEL, messages: question(q), max_tokens: 8, temperature: 0 };
        if (i % 2 === 0) return (await client.chat.completions.create(body)).choices[0]!.message.content;
        let text = '';
        for await (const c of await client.chat.completions.create({ ...body, stream: true })) text += c.choices[0]?.delta.content ?? '';
        return text;
      }),
    );
    for (const [i, q] of questions.entries()) expect(replies[i]).toBe((await direct(question(q), 8)).text);
    expect(new Set(replies).size).toBeGreaterThan(1);
  });
});

describe('prompt caching across clients (slots)', () => {
  const system = (topic: string) =>
    `You are a patient teacher who explains ${topic} to curious students. Answer in one short sentence, use plain words, ` +
    `avoid jargon, never use lists, and if a question is unclear, say what you would need to know to answer it well. ` +
    `Your favourite subject is ${topic}, and you like to end with a tiny fact about it.`;
  type Message = { role: 'system' | 'user' | 'assistant'; content: string };
  const turns: Record<'A' | 'B', [string, string]> = {
    A: ['What is a volcano?', 'Why do they erupt?'],
    B: ['What is a comet?', 'Where do they come from?'],
  };
  const topics = { A: 'geology', B: 'astronomy' };
  const maxTokens = 6;

  /** A1, B1, A2, B2 through `c`: each reply, its usage, and the messages sent. */
  async function alternate(c: OpenAI) {
    const history: Record<'A' | 'B', Message[]> = { A: [{ role: 'system', content: system(topics.A) }], B: [{ role: 'system', content: system(topics.B) }] };
    const out: { who: 'A' | 'B'; turn: number; messages: Message[]; text: string; usage: OpenAI.CompletionUsage }[] = [];
    for (const turn of [0, 1]) {
      for (const who of ['A', 'B'] as const) {
        history[who].push({ role: 'user', content: turns[who][turn]! });
        const messages = [...history[who]];
        const r = await c.chat.completions.create({ model: MODEL, messages, max_tokens: maxTokens, temperature: 0 });
        const text = r.choices[0]!.message.content!;
        history[who].push({ role: 'assistant', content: text });
        out.push({ who, turn, messages, text, usage: r.usage! });
      }
    }
    return out;
  }

  it('two clients taking turns each keep their prompt cached (A1, B1, A2, B2), and every reply is exact', async () => {
    const [a1, b1, a2, b2] = await alternate(client);
    // Before slots (one shared cache, as `slots: 1` still gives): B1 evicts A1's prefix and back.
    const s = await serve({ cascade, port: 0, modelId: MODEL, slots: 1 });
    let shared;
    try {
      shared = await alternate(clientOf(s));
    } finally {
      await s.close();
    }
    const cached = (r: { usage: OpenAI.CompletionUsage }) => r.usage.prompt_tokens_details!.cached_tokens!;
    console.log(
      `alternating clients, cached_tokens/prompt_tokens of A1 B1 A2 B2: ${[a1!, b1!, a2!, b2!].map((r) => `${cached(r)}/${r.usage.prompt_tokens}`).join(' ')} ` +
        `(4 slots); ${shared.map((r) => `${cached(r)}/${r.usage.prompt_tokens}`).join(' ')} (1 slot)`,
    );
    expect(a1!.usage.prompt_tokens).toBeGreaterThan(50);
    expect(cached(a2!)).toBeGreaterThanOrEqual(a1!.usage.prompt_tokens - 3);
    expect(cached(b2!)).toBeGreaterThanOrEqual(b1!.usage.prompt_tokens - 3);
    expect(cached(a2!)).toBeLessThan(a2!.usage.prompt_tokens);
    expect(cached(shared[2]!)).toBeLessThan(a1!.usage.prompt_tokens / 2);
    expect(cached(shared[3]!)).toBeLessThan(b1!.usage.prompt_tokens / 2);
    for (const [i, r] of [a1!, b1!, a2!, b2!].entries()) {
      expect(r.text).toBe((await cascade.generate(r.messages, { temperature: 0, maxTokens })).text);
      expect(shared[i]!.text).toBe(r.text);
    }
  });

  it('more conversations than slots: every reply is still exact (plain and streamed)', async () => {
    const s = await serve({ cascade, port: 0, modelId: MODEL, slots: 2 });
    try {
      const c = clientOf(s);
      const histories: Message[][] = [['a cat', 'its food'], ['the moon', 'its phases'], ['a train', 'its engine'], ['bread', 'its flour']].map(([x]) => [
        { role: 'user', content: `Tell me about ${x}.` },
      ]);
      const followUps = ['And its food?', 'And its phases?', 'And its engine?', 'And its flour?'];
      for (const round of [0, 1]) {
        for (const [i, messages] of histories.entries()) {
          if (round === 1) messages.push({ role: 'user', content: followUps[i]! });
          const body = { model: MODEL, messages: [...messages], max_tokens: maxTokens, temperature: 0 };
          let text = '';
          let usage: OpenAI.CompletionUsage | undefined | null;
          if (i % 2 === 1) {
            for await (const chunk of await c.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } })) {
              text += chunk.choices[0]?.delta.content ?? '';
              usage = chunk.usage ?? usage;
            }
          } else {
            const r = await c.chat.completions.create(body);
            text = r.choices[0]!.message.content!;
            usage = r.usage;
          }
          const d = await cascade.generate(body.messages, { temperature: 0, maxTokens });
          expect(text).toBe(d.text);
          expect(usage!.prompt_tokens).toBe(d.stats.promptTokens);
          expect(usage!.prompt_tokens_details!.cached_tokens).toBeLessThan(usage!.prompt_tokens);
          messages.push({ role: 'assistant', content: text });
        }
      }
      // Raw completions share the slots too.
      const prompt = 'The three primary colours are';
      const r = await c.completions.create({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0 });
      expect(r.choices[0]!.text).toBe((await cascade.generate(prompt, { temperature: 0, maxTokens })).text);
    } finally {
      await s.close();
    }
  });

  it('routing: a continuation goes to its slot, a new conversation to an unused or the least recently used one', async () => {
    const made: { disposed: boolean; dispose(): Promise<void> }[] = [];
    const fake = {
      createConversationCache: () => {
        const c = {
          disposed: false,
          dispose: async () => {
            c.disposed = true;
          },
        };
        made.push(c);
        return c;
      },
    } as unknown as Cascade;
    const pool = new SlotPool(fake, 3);
    const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);
    const result = (tokens: number[]) => ({ text: '', tokens, stats: {} }) as unknown as GenerationResult;
    const template = range(1, 10); // what every chat prompt starts with (say, a default system prompt)
    const a1 = [...template, ...range(100, 4)];
    const a = pool.acquire(a1);
    expect(a.index).toBe(0);
    a.done(result([7, 7]));
    // Shares the template only: an unused slot rather than cutting A's history short.
    const b1 = [...template, ...range(200, 4)];
    const b = pool.acquire(b1);
    expect(b.index).toBe(1);
    expect(b.cache).not.toBe(a.cache);
    b.done(result([8]));
    // A's next turn extends what slot 0 holds.
    expect(pool.route([...a1, 7, 7, 300])).toBe(0);
    expect(pool.route([...b1, 8, 301])).toBe(1);
    const c1 = pool.acquire([...template, ...range(400, 3)]);
    expect(c1.index).toBe(2);
    c1.done(result([]));
    // Every slot in use: a prompt sharing at least half of the shorter goes to the longest match...
    expect(pool.route([...template, 100, 101, 999])).toBe(0);
    // ... and one sharing nothing to the least recently used slot (A's, routed first).
    expect(pool.route(range(500, 20))).toBe(0);
    const d = pool.acquire(range(500, 20));
    expect(d.index).toBe(0);
    // Failed (never ran): the slot is taken to hold only what it shared with the prompt (nothing).
    d.failed();
    expect(pool.held(0)).toEqual([]);
    // A's history is gone; the template matches B's and C's slots alike, and the tie goes to the less recently used (B's).
    expect(pool.route([...a1, 7, 7, 300])).toBe(1);
    // A request superseded on its slot does not overwrite its successor's tokens.
    const e = pool.acquire(range(600, 10));
    const f = pool.acquire([...range(600, 10), 1, 2]);
    expect(f.index).toBe(e.index);
    e.done(result([42]));
    expect(pool.held(f.index)).toEqual([...range(600, 10), 1, 2]);
    f.done(result([3]));
    expect(pool.held(f.index)).toEqual([...range(600, 10), 1, 2, 3]);
    await pool.close();
    expect(made).toHaveLength(3);
    expect(made.every((c) => c.disposed)).toBe(true);
    expect(() => pool.acquire([1])).toThrow(/shutting down/);
  });

  it('slots must be an integer >= 1', () => {
    for (const slots of [0, 1.5, -1]) expect(() => createServer({ cascade, slots })).toThrow(/slots must be an integer >= 1/);
  });
});

describe('server options', () => {
  it('apiKey: a wrong key is a 401 (AuthenticationError), the right one works', async () => {
    const s = await serve({ cascade, port: 0, modelId: MODEL, apiKey: 'sesame' });
    try {
      await expect(clientOf(s, 'wrong').models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      expect((await clientOf(s, 'sesame').models.list()).data[0]!.id).toBe(MODEL);
    } finally {
      await s.close();
    }
  });

  it('corsOrigin: the preflight and every response (plain or streamed) carry the CORS headers; without it, none', async () => {
    const origin = 'http://localhost:3000';
    const s = await serve({ cascade, port: 0, modelId: MODEL, corsOrigin: origin });
    try {
      const preflight = await fetch(`${s.url}/v1/chat/completions`, {
        method: 'OPTIONS',
        headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
      });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get('access-control-allow-origin')).toBe(origin);
      expect(preflight.headers.get('access-control-allow-methods')).toContain('POST');
      expect(preflight.headers.get('access-control-allow-headers')).toBe('authorization, content-type');
      const models = await fetch(`${s.url}/v1/models`, { headers: { origin } });
      expect(models.headers.get('access-control-allow-origin')).toBe(origin);
      const stream = await fetch(`${s.url}/v1/completions`, {
        method: 'POST',
        headers: { origin, 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'Hello', max_tokens: 2, stream: true }),
      });
      expect(stream.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(stream.headers.get('access-control-allow-origin')).toBe(origin);
      expect(await stream.text()).toMatch(/data: \[DONE\]\n\n$/);
    } finally {
      await s.close();
    }
    const plain = await fetch(`${server.url}/v1/models`, { headers: { origin } });
    expect(plain.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('maxQueue: a request past the limit is a 429 (RateLimitError) while the others run', async () => {
    const s = await serve({ cascade, port: 0, modelId: MODEL, maxQueue: 1 });
    try {
      const c = clientOf(s);
      const first = await c.chat.completions.create({ model: MODEL, messages: question('Count to fifty.'), max_tokens: 48, temperature: 0, stream: true });
      const it = first[Symbol.asyncIterator]();
      await it.next(); // the first request holds the one place
      const error = await c.chat.completions.create({ model: MODEL, messages: question('Hi'), max_tokens: 4 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(OpenAI.RateLimitError);
      expect((error as InstanceType<typeof OpenAI.RateLimitError>).headers.get('retry-after')).toBe('1');
      while (!(await it.next()).done);
      const after = await c.chat.completions.create({ model: MODEL, messages: question('Hi'), max_tokens: 4, temperature: 0 });
      expect(after.choices[0]!.message.content).toBe((await direct(question('Hi'), 4)).text);
    } finally {
      await s.close();
    }
  });

  it('close() lets a request in flight finish within the grace period', async () => {
    const s = await serve({ cascade, port: 0, modelId: MODEL, shutdownGraceMs: 60_000 });
    const c = clientOf(s);
    const messages = question('What is the capital of France?');
    const stream = await c.chat.completions.create({ model: MODEL, messages, max_tokens: 12, temperature: 0, stream: true });
    const it = stream[Symbol.asyncIterator]();
    let text = (await it.next()).value?.choices[0]?.delta.content ?? '';
    const closed = s.close();
    for (let r = await it.next(); !r.done; r = await it.next()) text += r.value.choices[0]?.delta.content ?? '';
    await closed;
    expect(text).toBe((await direct(messages, 12)).text);
    await expect(c.models.list()).rejects.toBeInstanceOf(OpenAI.APIConnectionError);
  });

  it('close() during a stream ends it with an error event, refuses new requests, and leaves the Cascade usable', async () => {
    const s = await serve({ cascade, port: 0, modelId: MODEL, shutdownGraceMs: 0 });
    const c = clientOf(s);
    const stream = await c.chat.completions.create({ model: MODEL, messages: question('Write a long poem.'), max_tokens: 200, temperature: 0, stream: true });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const closed = s.close();
    const error = await (async () => {
      while (!(await it.next()).done);
    })().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as InstanceType<typeof OpenAI.APIError>).message).toMatch(/shutting down/);
    await closed;
    await expect(c.models.list()).rejects.toBeInstanceOf(OpenAI.APIConnectionError);
    const r = await client.chat.completions.create({ model: MODEL, messages: question('Hi'), max_tokens: 4, temperature: 0 });
    expect(r.choices[0]!.message.content).toBe((await direct(question('Hi'), 4)).text);
  });
});

describe('cascade-xla serve (the CLI)', () => {
  it('prints its address, answers the openai client, and exits cleanly on SIGTERM', async () => {
    const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '--max-context', '256', '--model-name', 'smol', '--quiet'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const lines = createInterface({ input: child.stdout });
        lines.on('line', (line) => {
          const m = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
          if (m) resolve(m[1]!);
        });
        void exited.then((code) => reject(new Error(`serve exited (${code}) before listening:\n${stderr}`)));
      });
      const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
      expect((await c.models.list()).data.map((m) => m.id)).toEqual(['smol']);
      // The default model also answers to its catalogue names.
      const r = await c.chat.completions.create({ model: 'smollm2', messages: question('What is the capital of France?'), max_tokens: 8, temperature: 0 });
      expect(r.choices[0]!.message.content).toBe((await direct(question('What is the capital of France?'), 8)).text);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toMatch(/SIGTERM: closing/);
      expect(stderr).toMatch(/stopped/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 600_000);

  it('a port in use fails at once with a clear message, before loading the model', async () => {
    const holder = createNetServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const taken = (holder.address() as AddressInfo).port;
    try {
      const child = spawn(process.execPath, [cli, 'serve', '--port', String(taken)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((r) => child.once('exit', r));
      expect(code).toBe(1);
      expect(stderr).toContain(`127.0.0.1:${taken} is in use`);
      expect(stderr).not.toMatch(/loading/);
    } finally {
      await new Promise((r) => holder.close(r));
    }
  });

  it('--help reads like documentation', async () => {
    const child = spawn(process.execPath, [cli, 'serve', '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise((r) => child.once('exit', r));
    for (const text of ['--host', '--port', '--model', '--mode', '--max-context', '--slots', '--target-precision', '/v1/chat/completions', 'stream_options.include_usage', 'Examples:']) {
      expect(out).toContain(text);
    }
  });
});
