/**
 * Tokens in, text pieces out: incremental decoding with stop strings. Text that could be the
 * start of a stop string is held back until it is known not to be one; at a stop string the text
 * is cut before it and the stream ends.
 * @internal
 * @module
 */
import type { StreamPiece } from './types.js';

/** What the stream needs from a tokenizer's incremental decoder (`Tokenizer.decodeStream()`). */
export interface IncrementalDecoder {
  push(ids: number[]): string;
  flush(): string;
}

export class StopStringStream {
  /** Every token pushed before the stream stopped. */
  readonly tokens: number[] = [];
  readonly #decoder: IncrementalDecoder;
  readonly #stops: readonly string[];
  readonly #holdBack: number;
  #text = '';
  #emitted = 0;
  #stopped = false;

  constructor(decoder: IncrementalDecoder, stops: readonly string[] = []) {
    this.#decoder = decoder;
    this.#stops = stops.filter((s) => s.length > 0);
    this.#holdBack = this.#stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
  }

  /** The text so far (cut before the stop string once one was found). */
  get text(): string {
    return this.#text;
  }

  /** True once a stop string was found: later pushes are ignored. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Adds tokens; returns the text they release (possibly '', when held back or not yet a whole
   * character) together with the tokens themselves.
   */
  push(ids: readonly number[]): StreamPiece {
    const tokens = [...ids];
    if (this.#stopped) return { text: '', tokens };
    this.tokens.push(...tokens);
    this.#text += this.#decoder.push(tokens);
    let cut = -1;
    for (const s of this.#stops) {
      const at = this.#text.indexOf(s, Math.max(0, this.#emitted - s.length));
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#text = this.#text.slice(0, cut);
      this.#stopped = true;
    }
    const ready = this.#stopped ? this.#text.length : Math.max(this.#emitted, this.#text.length - this.#holdBack);
    const text = ready > this.#emitted ? this.#text.slice(this.#emitted, ready) : '';
    this.#emitted = Math.max(this.#emitted, ready);
    return { text, tokens };
  }

  /** The end of the generation: the text still held back (and the decoder's last characters). */
  flush(): string {
    if (this.#stopped) return '';
    this.#text += this.#decoder.flush();
    const rest = this.#text.slice(this.#emitted);
    this.#emitted = this.#text.length;
    return rest;
  }
}
