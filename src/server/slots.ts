/**
 * Prompt caching across clients: a pool of {@link ConversationCache}s ("slots", as llama.cpp's
 * server calls them), each remembering the tokens of its last request (prompt and reply), and the
 * rule that routes a request to one of them.
 *
 * Routing only decides which KV caches a generation continues; the Cascade itself reuses the
 * longest common prefix of the prompt with what those caches hold, and its output is exactly a
 * fresh generation's whatever slot is picked. A poor choice costs prefill time, never correctness.
 * @module
 */
import type { Cascade, GenerationResult } from '../cascade/cascade.js';
import type { ConversationCache } from '../cascade/conversation-cache.js';
import { ServerRequestError } from './errors.js';

/**
 * A match is meaningful when the common prefix is at least this share of the shorter of the
 * slot's tokens and the prompt (llama.cpp uses 0.5 of the prompt as its default similarity).
 */
export const MIN_SHARED = 0.5;

/**
 * While a slot is still unused, a match that keeps less than this share of what its slot holds
 * goes to the unused slot instead: a new conversation that merely shares a system prompt (or the
 * chat template's default one) with another must not cut that other one's history short.
 */
export const MIN_KEPT = 0.75;

/** Length of the common prefix of `a` and `b`. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) ++i;
  return i;
}

interface Slot {
  /** Made on first use (nothing is held on the device before). */
  cache: ConversationCache | undefined;
  /** What the slot's caches hold once the requests routed to it so far have run (our best guess). */
  tokens: number[];
  /** When a request was last routed here (a counter); 0 for a slot never used. */
  lastUsed: number;
  /** Bumped per routed request: only the latest request of a slot updates `tokens` when it ends. */
  version: number;
}

/** What {@link SlotPool.acquire} hands a request: the cache to pass, and how to report the outcome. */
export interface SlotLease {
  /** The slot's index (0-based). */
  readonly index: number;
  /** Pass as `GenerateOptions.cache`. */
  readonly cache: ConversationCache;
  /** The generation ended with `result`: the slot now holds its prompt and reply. */
  done(result: GenerationResult): void;
  /** The generation failed or was aborted (queued or running): keep only what surely survived. */
  failed(): void;
}

/** A fixed number of conversation caches, and the routing of requests onto them. */
export class SlotPool {
  readonly #cascade: Cascade;
  readonly #slots: Slot[];
  #clock = 0;
  #closed = false;

  constructor(cascade: Cascade, size: number) {
    this.#cascade = cascade;
    this.#slots = Array.from({ length: size }, () => ({ cache: undefined, tokens: [], lastUsed: 0, version: 0 }));
  }

  get size(): number {
    return this.#slots.length;
  }

  /** The tokens slot `index` is taken to hold (for tests and diagnostics). */
  held(index: number): readonly number[] {
    return this.#slots[index]?.tokens ?? [];
  }

  /**
   * The slot for a prompt of token ids `prompt` (as the Cascade encodes it). Requests run in the
   * order they are routed (the Cascade's queue), so the slot is assumed to hold `prompt` from now
   * on, and the next request is routed against that.
   */
  acquire(prompt: readonly number[]): SlotLease {
    if (this.#closed) throw new ServerRequestError(503, 'the server is shutting down', { code: 'server_shutting_down' });
    const index = this.route(prompt);
    const slot = this.#slots[index]!;
    slot.cache ??= this.#cascade.createConversationCache();
    const before = slot.tokens;
    const version = ++slot.version;
    slot.tokens = [...prompt];
    slot.lastUsed = ++this.#clock;
    const current = () => slot.version === version;
    return {
      index,
      cache: slot.cache,
      done: (result) => {
        if (current()) slot.tokens = [...prompt, ...result.tokens];
      },
      failed: () => {
        // Never run, or stopped during the prefill or the reply: the part of the prompt it shared
        // with what the slot held before is there either way.
        if (current()) slot.tokens = before.slice(0, commonPrefix(before, prompt));
      },
    };
  }

  /**
   * The index of the slot a prompt goes to:
   * 1. the slot whose tokens share the longest common prefix with it, when that prefix is at least
   *    {@link MIN_SHARED} of the shorter of the two, unless it keeps less than {@link MIN_KEPT}
   *    of that slot's tokens while another slot is still unused (then the unused slot);
   * 2. else the least recently used slot (unused ones first).
   */
  route(prompt: readonly number[]): number {
    let best = -1;
    let bestShared = 0;
    let lru = 0;
    let unused = false;
    this.#slots.forEach((slot, i) => {
      if (slot.lastUsed < this.#slots[lru]!.lastUsed) lru = i;
      if (slot.lastUsed === 0) unused = true;
      const shared = commonPrefix(slot.tokens, prompt);
      if (shared === 0 || shared < MIN_SHARED * Math.min(slot.tokens.length, prompt.length)) return;
      // Ties go to the less recently used slot (the other one keeps its tokens).
      if (shared > bestShared || (shared === bestShared && slot.lastUsed < this.#slots[best]!.lastUsed)) {
        best = i;
        bestShared = shared;
      }
    });
    if (best >= 0 && (!unused || bestShared >= MIN_KEPT * this.#slots[best]!.tokens.length)) return best;
    return lru;
  }

  /** Frees every slot's caches (after the generations queued before). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const caches = this.#slots.flatMap((s) => (s.cache ? [s.cache] : []));
    for (const s of this.#slots) s.cache = undefined;
    await Promise.all(caches.map((c) => c.dispose().catch(() => {})));
  }
}
