// Conversations that reuse their KV cache, on the real SmolLM2-135M-Instruct GGUF through the XLA
// CPU plugin: a second turn prefills only what the cache has not seen, and its reply is exactly
// what a generation of the same history from scratch gives; sessions keep their own caches; a
// failed or aborted turn leaves the history as it was.
import { describe, expect, it } from 'vitest';

import { Cascade, DisposedError, InvalidArgumentError, type ChatMessage } from '../src/index.js';
import { withDefaultCascade } from './helpers/default-cascade.js';

describe('ChatSession on SmolLM2-135M-Instruct', () => {
  let c: Cascade;
  let fresh: Cascade; // maxSequences 1 and only plain generate calls with other histories in between
  withDefaultCascade((loaded) => (c = loaded), { maxContext: 384, maxSequences: 3 });
  withDefaultCascade((loaded) => (fresh = loaded), { maxContext: 384, maxSequences: 1 });

  /** The reply to `messages` from a cache that holds none of them (evaluate() overwrites it first). */
  async function fromScratch(messages: ChatMessage[], maxTokens: number) {
    await fresh.evaluate([1, 2, 3]);
    const r = await fresh.generate(messages, { maxTokens });
    expect(r.stats.cachedTokens).toBe(0);
    return r;
  }

  it('a second turn reuses the first turn cache and replies exactly as from scratch', async () => {
    const chat = c.createChatSession({ systemPrompt: 'You are a helpful assistant. Answer briefly.' });
    try {
      const first = await chat.prompt('What is the capital of France?', { maxTokens: 12 });
      expect(first.text.length).toBeGreaterThan(0);
      expect(first.stats.cachedTokens).toBe(0);
      expect(chat.history).toEqual([
        { role: 'user', content: 'What is the capital of France?' },
        { role: 'assistant', content: first.text },
      ]);
      const second = await chat.prompt('And of Italy?', { maxTokens: 12 });
      // Everything of the first turn's prompt is in the cache (and most of its reply).
      expect(second.stats.cachedTokens).toBeGreaterThanOrEqual(first.stats.promptTokens);
      expect(second.stats.cachedTokens).toBeLessThan(second.stats.promptTokens);
      const messages: ChatMessage[] = [
        { role: 'system', content: 'You are a helpful assistant. Answer briefly.' },
        { role: 'user', content: 'What is the capital of France?' },
        { role: 'assistant', content: first.text },
        { role: 'user', content: 'And of Italy?' },
      ];
      const reference = await fromScratch(messages, 12);
      expect(second.tokens).toEqual(reference.tokens);
      expect(second.text).toBe(reference.text);
      expect(second.stats.firstTokenMs).toBeGreaterThan(0);
    } finally {
      await chat.dispose();
    }
  });

  it('streams a turn, and sessions keep their own caches when interleaved', async () => {
    const a = c.createChatSession();
    const b = c.createChatSession({ history: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello!' }] });
    try {
      let streamed = '';
      for await (const piece of a.stream('Count to three.', { maxTokens: 10 })) streamed += piece.text;
      expect(a.history[1]).toEqual({ role: 'assistant', content: streamed });
      await b.prompt('Name a color.', { maxTokens: 8 });
      // Plain generate calls use a conversation of their own: they do not disturb the sessions.
      await c.generate('Unrelated text that fills the default conversation', { maxTokens: 4 });
      const a2 = await a.prompt('Now to five.', { maxTokens: 8 });
      const b2 = await b.prompt('Another one.', { maxTokens: 8 });
      expect(a2.stats.cachedTokens).toBeGreaterThan(10);
      expect(b2.stats.cachedTokens).toBeGreaterThan(10);
      expect(b2.tokens).toEqual((await fromScratch([...b.history.slice(0, -1)], 8)).tokens);
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });

  it('generate with a ConversationCache reuses it; foreign or disposed caches are refused', async () => {
    const cache = c.createConversationCache();
    const history: ChatMessage[] = [{ role: 'user', content: 'Write one word about the sea.' }];
    const first = await c.generate(history, { cache, maxTokens: 6 });
    // Plain calls in between use the default conversation: this cache keeps its tokens.
    await c.generate('Something else entirely', { maxTokens: 3 });
    const next: ChatMessage[] = [...history, { role: 'assistant', content: first.text }, { role: 'user', content: 'And the sky?' }];
    const second = await c.generate(next, { cache, maxTokens: 6 });
    expect(second.stats.cachedTokens).toBeGreaterThanOrEqual(first.stats.promptTokens - 1);
    expect(second.tokens).toEqual((await fromScratch(next, 6)).tokens);
    const foreign = fresh.createConversationCache();
    await expect(c.generate('x', { cache: foreign, maxTokens: 1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await foreign.dispose();
    await cache.dispose();
    await expect(c.generate('x', { cache, maxTokens: 1 })).rejects.toBeInstanceOf(DisposedError);
  });

  it('an aborted turn leaves the history unchanged; turns do not overlap; dispose ends the session', async () => {
    const chat = c.createChatSession();
    await chat.prompt('Say yes.', { maxTokens: 4 });
    const controller = new AbortController();
    const aborted = chat.prompt('Tell me a long story about the sea.', { maxTokens: 200, signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    await expect(aborted).rejects.toThrow();
    expect(chat.history).toHaveLength(2);
    const running = chat.prompt('Say no.', { maxTokens: 4 });
    await expect(chat.prompt('Too early', { maxTokens: 4 })).rejects.toBeInstanceOf(InvalidArgumentError);
    const r = await running;
    expect(r.stats.cachedTokens).toBeGreaterThan(0);
    expect(chat.history).toHaveLength(4);
    await chat.dispose();
    await expect(chat.prompt('Hello?')).rejects.toBeInstanceOf(DisposedError);
    expect(() => c.createChatSession({ systemPrompt: 5 as unknown as string })).toThrow(InvalidArgumentError);
  });
});
