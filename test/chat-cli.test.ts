// `cascade-xla chat` as a person uses it: in a real terminal (tmux), typing lines, reading the
// screen. The conversation carries its history (the second turn's prompt is longer and answers
// from the first), /reset forgets it, Ctrl-C stops a reply without leaving, the up arrow recalls
// the last line (also from the history file of an earlier session), Ctrl-D quits with status 0.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { defaultModelPath, ensureDefaultModel } from '../src/models/default-model.js';
import { cacheRoot, compileCacheDir } from '../src/utils/cache.js';

const root = path.resolve(import.meta.dirname, '..');
const hasTmux = spawnSync('tmux', ['-V']).status === 0;
const model = defaultModelPath();
const session = `cascade-chat-test-${process.pid}`;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'cascade-chat-'));

// Each chat session gets its own tmux server (-L): killing a server's last session makes it exit,
// and a new-session that reaches the exiting server fails with "server exited unexpectedly".
let socket = `cascade-chat-test-${process.pid}-0`;
const tmux = (...args: string[]) => {
  const r = spawnSync('tmux', ['-L', socket, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tmux ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
/** The whole pane, scrollback included, wrapped lines joined. */
const screen = () => tmux('capture-pane', '-p', '-J', '-S', '-', '-t', session);
const type = (text: string) => tmux('send-keys', '-t', session, '-l', text);
const key = (...keys: string[]) => tmux('send-keys', '-t', session, ...keys);

async function waitFor(test: (s: string) => boolean, what: string, ms = 120_000): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const s = screen();
    if (test(s)) return s;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; the screen:\n${s}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
/** The stats lines `(N prompt tokens, ...)` in order. */
const promptTokens = (s: string) => [...s.matchAll(/^\((\d+) prompt tokens(?: \(\d+ reused from the KV cache\))?, (\d+) tokens/gm)].map((m) => Number(m[1]));
/** The prompt tokens each turn found in the KV cache (0 when the line does not say). */
const reused = (s: string) => [...s.matchAll(/^\(\d+ prompt tokens(?: \((\d+) reused from the KV cache\))?, /gm)].map((m) => Number(m[1] ?? 0));
/** True when the last non-empty line is an empty prompt. */
const atPrompt = (s: string) => s.trimEnd().split('\n').at(-1) === '>';

let starts = 0;
function start(extra = ''): void {
  // The test's own cache root (for the history file), the real plugin, model and compiled programs.
  const env = [
    `CASCADE_CACHE_DIR=${tmp}`,
    `CASCADE_COMPILE_CACHE_DIR=${compileCacheDir()}`,
    `CASCADE_PJRT_PLUGIN=${process.env.CASCADE_PJRT_PLUGIN ?? path.join(cacheRoot(), 'plugins', 'xla-cpu-pjrt-0.0.1', 'xla_cpu_pjrt.so')}`,
  ].join(' ');
  socket = `cascade-chat-test-${process.pid}-${++starts}`;
  const cmd = `cd ${root} && env ${env} ${process.execPath} dist/cli/main.js chat --model ${model} --draft-layers 4 --max-tokens 160 --max-context 768 --stats ${extra}; echo EXIT=$?; sleep 120`;
  tmux('new-session', '-d', '-s', session, '-x', '160', '-y', '50', cmd);
}

afterAll(() => {
  spawnSync('tmux', ['-L', socket, 'kill-server']);
  rmSync(tmp, { recursive: true, force: true });
});

describe.skipIf(!hasTmux)('cascade-xla chat in a terminal (tmux)', () => {
  beforeAll(async () => {
    await ensureDefaultModel(); // the default model, fetched once into the real cache
  }, 600_000);

  it('keeps the conversation, resets it, stops a reply on Ctrl-C, recalls lines, quits on Ctrl-D', async () => {
    start();
    await waitFor(atPrompt, 'the first prompt', 400_000);

    type('What is the capital of France?');
    key('Enter');
    let s = await waitFor((x) => promptTokens(x).length === 1 && atPrompt(x), 'the first reply');
    expect(s).toMatch(/^> What is the capital of France\?\n.*Paris/m);

    type('And of Germany?');
    key('Enter');
    s = await waitFor((x) => promptTokens(x).length === 2 && atPrompt(x), 'the second reply');
    const [first, second] = promptTokens(s) as [number, number];
    // The whole history went in (the first question and its answer), and the model used it.
    expect(second).toBeGreaterThan(first + 10);
    // Re-sending the history is cheap: the engine reuses the first turn's KV cache for the shared prefix.
    expect(reused(s)[1]).toBeGreaterThan(0);
    expect(s.slice(s.indexOf('> And of Germany?'))).toMatch(/Berlin/);

    type('/reset');
    key('Enter');
    await waitFor((x) => x.includes('(conversation cleared)') && atPrompt(x), '/reset');
    type('What is the capital of France?');
    key('Enter');
    s = await waitFor((x) => promptTokens(x).length === 3 && atPrompt(x), 'the reply after /reset');
    expect(promptTokens(s)[2]).toBe(first); // the same prompt as the very first turn: the history is gone

    // Ctrl-C while the reply streams: it stops, the chat goes on.
    type('Write a long story about a dragon who learns to paint, with many chapters.');
    key('Enter');
    await waitFor((x) => {
      const after = x.slice(x.lastIndexOf('> Write a long story'));
      return after.split('\n').slice(1).join('').trim().length > 20;
    }, 'the story to start streaming');
    key('C-c');
    s = await waitFor((x) => x.includes('[stopped]') && atPrompt(x), 'the stopped reply');
    expect(s).not.toMatch(/EXIT=/);
    expect(promptTokens(s)).toHaveLength(3); // no stats line for a stopped reply

    // The up arrow brings back the last line typed.
    key('Up');
    await waitFor((x) => x.trimEnd().split('\n').at(-1)!.startsWith('> Write a long story'), 'the recalled line');
    key('C-u');
    await waitFor(atPrompt, 'the cleared line');

    key('C-d');
    s = await waitFor((x) => /EXIT=\d+/.test(x), 'the exit', 30_000);
    expect(s).toMatch(/EXIT=0/);
    const history = readFileSync(path.join(tmp, 'chat-history'), 'utf8').trim().split('\n');
    expect(history.at(-1)).toBe('Write a long story about a dragon who learns to paint, with many chapters.');
    expect(history).toContain('/reset');
    spawnSync('tmux', ['-L', socket, 'kill-server']);

    // A new session recalls the previous one's lines from the history file.
    start('--mode target');
    await waitFor(atPrompt, 'the second session\'s prompt', 400_000);
    key('Up');
    await waitFor((x) => x.trimEnd().split('\n').at(-1)!.startsWith('> Write a long story'), 'a line from the previous session');
    key('C-u');
    type('/exit');
    key('Enter');
    s = await waitFor((x) => /EXIT=\d+/.test(x), 'the exit after /exit', 30_000);
    expect(s).toMatch(/EXIT=0/);
  }, 900_000);
});

if (!hasTmux) {
  describe('cascade-xla chat in a terminal', () => {
    it.skip('needs tmux on PATH (apt-get install tmux): the chat REPL is tested in a real terminal', () => {});
  });
}
