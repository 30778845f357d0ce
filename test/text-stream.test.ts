// StopStringStream: incremental text with stop strings, on the real SmolLM2 tokenizer's decoder
// (multi-token characters, stop strings split across tokens, held-back text released at the end).
import { beforeAll, describe, expect, it } from 'vitest';

import { StopStringStream } from '../src/cascade/text-stream.js';
import { ensureDefaultModel } from '../src/models/default-model.js';
import { Tokenizer } from '../src/tokenizer/index.js';

describe('StopStringStream', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await Tokenizer.fromGguf((await ensureDefaultModel()).path);
  }, 600_000);

  /** Feeds `text`'s tokens one at a time; returns the pieces' text and the stream. */
  function feed(text: string, stops: string[]) {
    const stream = new StopStringStream(tok.decodeStream({ skipSpecialTokens: true }), stops);
    const pieces: string[] = [];
    for (const id of tok.encode(text, { addBos: false })) {
      const piece = stream.push([id]);
      expect(piece.tokens).toEqual([id]);
      if (piece.text) pieces.push(piece.text);
    }
    const rest = stream.flush();
    if (rest) pieces.push(rest);
    return { pieces, stream };
  }

  it('without stop strings, the pieces join to the text (multi-byte characters included)', () => {
    const text = 'Héllo wörld — ünïcode 🙂 and plain words.';
    const { pieces, stream } = feed(text, []);
    expect(pieces.join('')).toBe(text);
    expect(stream.text).toBe(text);
    expect(stream.stopped).toBe(false);
  });

  it('cuts before the first stop string, even when it spans tokens, and ignores later tokens', () => {
    const { pieces, stream } = feed('The answer is 42.\nUser: next question', ['\nUser:', 'question']);
    expect(pieces.join('')).toBe('The answer is 42.');
    expect(stream.text).toBe('The answer is 42.');
    expect(stream.stopped).toBe(true);
    expect(stream.push([1, 2]).text).toBe('');
    expect(stream.flush()).toBe('');
  });

  it('holds back what could start a stop string, and releases it when it is not one', () => {
    const stream = new StopStringStream(tok.decodeStream({ skipSpecialTokens: true }), ['STOP']);
    const ids = tok.encode('a STOOP b', { addBos: false });
    let out = '';
    for (const id of ids) out += stream.push([id]).text;
    // At most three characters ('STO'.length) can still be held back before the end.
    expect('a STOOP b'.startsWith(out)).toBe(true);
    expect('a STOOP b'.length - out.length).toBeLessThanOrEqual(3);
    out += stream.flush();
    expect(out).toBe('a STOOP b');
    expect(stream.stopped).toBe(false);
  });
});
