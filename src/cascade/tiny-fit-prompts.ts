/**
 * The requests the tiny's fit starts its text from (`tiny: 'fit'` and `distillTiny`): the tiny
 * learns the draft's hidden states, and those of chat-formatted requests differ from those of
 * text that starts at a random token (on SmolLM2, coverage of a chat answer at K0 = 64 went from
 * 0.92 to 1.00 with these; docs/how-the-cascade-works.md). Varied on purpose: questions, code,
 * lists, prose, translation. Changing the list changes what a fit learns: bump kTinyFitVersion in
 * cpp/model/tiny.h so cached fits are made again.
 */
import type { Tokenizer } from '../tokenizer/index.js';

const FIT_REQUESTS = [
  'What is the capital of France?',
  'Write a poem about the sea.',
  'How do I sort a list in Python?',
  'Give me three tips for better sleep.',
  'Summarize the plot of Romeo and Juliet.',
  'What causes earthquakes?',
  'Translate "good morning" into Spanish and German.',
  'Explain recursion to a beginner.',
];

/** The fit's prompts as token ids, encoded as `generate` encodes a chat (the plain request without a chat template). */
export function tinyFitPrompts(tokenizer: Tokenizer): Int32Array[] {
  return FIT_REQUESTS.map((request) =>
    Int32Array.from(
      tokenizer.chatTemplate
        ? tokenizer.encode(tokenizer.applyChatTemplate([{ role: 'user', content: request }], { addGenerationPrompt: true }), { addBos: false })
        : tokenizer.encode(request),
    ),
  );
}
