/**
 * A conversation on a {@link Cascade}: the history, the model's chat template, and a KV cache of its
 * own that carries over between turns.
 * @module
 */
import { DisposedError, InvalidArgumentError } from '../errors.js';
import type { ChatMessage, Tokenizer } from '../tokenizer/index.js';
import type { GenerateOptions, GenerationResult, StreamPiece } from './cascade.js';

/** Options of {@link Cascade.createChatSession}. */
export interface ChatSessionOptions {
  /** A system message placed before the conversation (when the chat template has a system role). */
  systemPrompt?: string;
  /** Earlier turns to start from (user and assistant messages, oldest first). */
  history?: ChatMessage[];
  /** Generation options every turn starts from; a turn's own options override them. */
  defaults?: GenerateOptions;
}

/**
 * What a session needs from its Cascade (created by {@link Cascade.createChatSession}).
 * @internal
 */
export interface ChatSessionBackend {
  tokenizer: Tokenizer;
  run(messages: ChatMessage[], options: GenerateOptions, done: (r: GenerationResult) => void): AsyncGenerator<StreamPiece, void, undefined>;
  release(): Promise<void>;
}

/**
 * A chat with its own KV cache. Each turn renders the whole history with the model's chat template
 * and generates the reply; the engine compares the rendered tokens with what the session's cache
 * holds and prefills only the new ones (the user's message, mostly), so a long conversation's
 * later turns start as fast as its first. The output is exactly what a fresh generation of the
 * same history gives (`stats.cachedTokens` says how much was reused).
 *
 * A turn that fails or is aborted leaves the history as it was. Sessions share their model's
 * queue: turns of several sessions run one at a time, in call order.
 *
 * @example
 * ```ts
 * const chat = cascade.createChatSession({ systemPrompt: 'Answer in one sentence.' });
 * try {
 *   console.log((await chat.prompt('What is a prime number?')).text);
 *   for await (const piece of chat.stream('Give an example.')) process.stdout.write(piece.text);
 * } finally {
 *   await chat.dispose();
 * }
 * ```
 */
export class ChatSession {
  readonly #backend: ChatSessionBackend;
  readonly #system: ChatMessage[];
  readonly #defaults: GenerateOptions;
  #history: ChatMessage[];
  #disposed = false;
  #busy = false;

  /** @internal Use {@link Cascade.createChatSession}. */
  constructor(backend: ChatSessionBackend, options: ChatSessionOptions = {}) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('createChatSession: options must be an object');
    if (options.systemPrompt !== undefined && typeof options.systemPrompt !== 'string') {
      throw new InvalidArgumentError('createChatSession: systemPrompt must be a string');
    }
    const history = options.history ?? [];
    if (!Array.isArray(history) || history.some((m) => typeof m?.role !== 'string' || typeof m?.content !== 'string')) {
      throw new InvalidArgumentError('createChatSession: history must be an array of { role, content } strings');
    }
    this.#backend = backend;
    this.#system = options.systemPrompt !== undefined ? [{ role: 'system', content: options.systemPrompt }] : [];
    this.#defaults = { ...(options.defaults ?? {}) };
    this.#history = history.map((m) => ({ role: m.role, content: m.content }));
  }

  /** The turns so far (user and assistant messages, oldest first; the system prompt not included). */
  get history(): readonly ChatMessage[] {
    return this.#history.map((m) => ({ ...m }));
  }

  /** True once {@link dispose} has run. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** Sends `message` as the user's turn and returns the model's reply (added to the history). */
  async prompt(message: string, options: GenerateOptions = {}): Promise<GenerationResult> {
    let result: GenerationResult | undefined;
    for await (const piece of this.#turn(message, options, (r) => (result = r))) void piece;
    return result!;
  }

  /** Like {@link prompt}, yielding the reply's text as it is generated; returns the whole result. */
  async *stream(message: string, options: GenerateOptions = {}): AsyncGenerator<StreamPiece, GenerationResult, undefined> {
    let result: GenerationResult | undefined;
    yield* this.#turn(message, options, (r) => (result = r));
    return result!;
  }

  async *#turn(message: string, options: GenerateOptions, done: (r: GenerationResult) => void): AsyncGenerator<StreamPiece, void, undefined> {
    if (this.#disposed) throw new DisposedError('ChatSession: the session has been disposed');
    if (typeof message !== 'string') throw new InvalidArgumentError('ChatSession: the message must be a string');
    // A turn answers the history before it: the next one has to wait for its reply.
    if (this.#busy) throw new InvalidArgumentError('ChatSession: a turn is still running (await it before sending the next message)');
    this.#busy = true;
    try {
      const user: ChatMessage = { role: 'user', content: message };
      const messages = [...this.#system, ...this.#history, user];
      let result: GenerationResult | undefined;
      yield* this.#backend.run(messages, { ...this.#defaults, ...options }, (r) => (result = r));
      if (!result) return; // the consumer stopped early: the turn did not happen
      this.#history.push(user, { role: 'assistant', content: result.text });
      done(result);
    } finally {
      this.#busy = false;
    }
  }

  /** Forgets the turns (the system prompt stays); the cache is reused as far as it still matches. */
  reset(): void {
    this.#history = [];
  }

  /** Frees the session's KV cache. Later calls throw {@link DisposedError}. Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.#backend.release();
  }

  /** Same as {@link dispose}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
