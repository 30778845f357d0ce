/**
 * `cascade-xla bench --suite chat`: what a conversation's KV-cache reuse buys. Per run, one session
 * answers a turn over a given history (cold: nothing cached) and then a second turn (warm: the cache
 * holds the history and the first reply); a new session then answers that same second turn over
 * the same history from scratch (cold). Time to first token of the warm turn over the cold one,
 * same prompt tokens, medians of several runs. Writes chat.json and chat.md.
 * @internal
 * @module
 */
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { Cascade, type DecodeMode } from '../../cascade/cascade.js';
import type { ChatMessage } from '../../tokenizer/index.js';
import { ensureDefaultModel } from '../../models/default-model.js';
import { median, table } from '../output.js';

/** Options of {@link benchChat}. */
export interface ChatBenchOptions {
  model?: string;
  plugin?: string;
  mode: DecodeMode;
  runs: number;
  out: string;
}

// A history of a few hundred tokens, as a chat accumulates it.
const HISTORY: ChatMessage[] = [
  { role: 'user', content: 'I am planning a three-day trip to Lisbon in spring. What should I see on the first day?' },
  {
    role: 'assistant',
    content:
      'On the first day, start in Alfama: walk up to the Castelo de São Jorge for the view over the river, visit the ' +
      'Lisbon Cathedral on the way down, and stop at the Miradouro de Santa Luzia. In the afternoon take tram 28 through ' +
      'Graça and Baixa, then end the day with dinner and fado in one of the small restaurants of Alfama.',
  },
  { role: 'user', content: 'And the second day? I like museums and good food.' },
  {
    role: 'assistant',
    content:
      'Spend the second day in Belém: the Jerónimos Monastery, the Belém Tower and the Monument to the Discoveries are ' +
      'close together, and the MAAT museum sits on the riverside nearby. Try the pastéis de Belém at the original bakery. ' +
      'In the evening go to the Time Out Market at Cais do Sodré, where many of the city\'s best cooks have stalls.',
  },
];

export async function benchChat(o: ChatBenchOptions): Promise<void> {
  const target = o.model ?? (await ensureDefaultModel({ onProgress: (m) => console.error(m) })).path;
  const cascade = await Cascade.load({ target, plugin: o.plugin, maxContext: 1024, maxSequences: 2, warmup: true });
  const rows: { historyTokens: number; cachedTokens: number; coldMs: number; warmMs: number }[] = [];
  try {
    const options = { mode: o.mode, maxTokens: 16, temperature: 0 } as const;
    // One unmeasured round: compiles what the measured ones use.
    await cascade.generate([...HISTORY, { role: 'user', content: 'Hello' }], { ...options, maxTokens: 2 });
    for (let run = 0; run < o.runs; run++) {
      const warmSession = cascade.createChatSession({ history: HISTORY });
      await warmSession.prompt('What about the third day?', options);
      const history = warmSession.history;
      const warm = await warmSession.prompt('Which of these places is best at sunset?', options);
      await warmSession.dispose();
      const coldSession = cascade.createChatSession({ history: [...history] });
      const cold = await coldSession.prompt('Which of these places is best at sunset?', options);
      await coldSession.dispose();
      if (cold.text !== warm.text) throw new Error('bench chat: the warm and the cold turn gave different replies (exactness broken)');
      rows.push({ historyTokens: warm.stats.promptTokens, cachedTokens: warm.stats.cachedTokens, coldMs: cold.stats.firstTokenMs, warmMs: warm.stats.firstTokenMs });
      console.error(`run ${run + 1}/${o.runs}: cold ${cold.stats.firstTokenMs.toFixed(1)} ms, warm ${warm.stats.firstTokenMs.toFixed(1)} ms`);
    }
  } finally {
    await cascade.dispose();
  }
  const cold = median(rows.map((r) => r.coldMs));
  const warm = median(rows.map((r) => r.warmMs));
  const summary = {
    suite: 'chat',
    date: new Date().toISOString(),
    machine: `${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? 'unknown'}), load average ${os.loadavg()[0]!.toFixed(2)} at the end`,
    mode: o.mode,
    runs: rows,
    promptTokens: rows[0]?.historyTokens,
    cachedTokens: rows[0]?.cachedTokens,
    coldFirstTokenMs: cold,
    warmFirstTokenMs: warm,
    ratio: warm / cold,
  };
  const md = [
    '# Chat turns: time to first token with and without the KV cache',
    '',
    `\`cascade-xla bench --suite chat --mode ${o.mode} --runs ${o.runs}\`, ${summary.date.slice(0, 10)}, ${summary.machine}.`,
    '',
    'The same second turn (same history, same prompt tokens) answered by a session whose cache holds the first',
    'turn (warm) and by a new session (cold: the whole history is prefilled). Medians; the replies are identical.',
    '',
    table([
      ['prompt tokens', 'cached tokens', 'cold first token ms', 'warm first token ms', 'warm / cold'],
      [String(summary.promptTokens), String(summary.cachedTokens), cold.toFixed(1), warm.toFixed(1), summary.ratio.toFixed(3)],
    ]),
    '',
  ].join('\n');
  await mkdir(o.out, { recursive: true });
  await writeFile(path.join(o.out, 'chat.json'), `${JSON.stringify(summary, null, 2)}\n`);
  await writeFile(path.join(o.out, 'chat.md'), md);
  console.log(md);
}
