/**
 * A conversation's KV caches, as a handle: what {@link GenerateOptions.cache} continues.
 * @module
 */
import { DisposedError } from '../errors.js';

/**
 * The KV caches (target and draft) of one conversation, kept on the device between calls. A
 * generation given this cache (`generate(prompt, { cache })`) reuses the longest common prefix of
 * its prompt with what the cache holds, and prefills only the rest; the output is exactly what a
 * fresh generation gives. Plain calls without `cache` share one default conversation.
 * {@link ChatSession} uses one of these; servers keep a few and route each request to the one
 * whose last prompt shares the most with it. Made by {@link Cascade.createConversationCache}.
 */
export class ConversationCache {
  readonly #release: () => Promise<void>;
  #disposed = false;

  /** @internal Use {@link Cascade.createConversationCache}. */
  constructor(release: () => Promise<void>) {
    this.#release = release;
  }

  /** True once {@link dispose} has run. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** Frees the caches (after the calls queued before). Later generations with it throw {@link DisposedError}. Idempotent. */
  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    await this.#release();
  }

  /** Same as {@link dispose}, for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** Which Cascade and engine conversation each cache belongs to. @internal */
const owners = new WeakMap<ConversationCache, { owner: object; id: number }>();

/** @internal */
export function registerConversationCache(cache: ConversationCache, owner: object, id: number): void {
  owners.set(cache, { owner, id });
}

/**
 * The engine conversation id of `cache` for `owner`'s generations, or undefined when it is not
 * one of `owner`'s caches. Throws DisposedError for a disposed cache.
 * @internal
 */
export function conversationId(cache: ConversationCache, owner: object): number | undefined {
  const entry = owners.get(cache);
  if (!entry || entry.owner !== owner) return undefined;
  if (cache.disposed) throw new DisposedError('generate: the conversation cache has been disposed');
  return entry.id;
}
