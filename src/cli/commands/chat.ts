import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import * as readline from 'node:readline';

import { Command } from 'commander';

import type { Cascade, DecodeMode, GenerateOptions } from '../../cascade/cascade.js';
import type { ChatMessage } from '../../tokenizer/index.js';
import { cachePath } from '../../utils/cache.js';
import { addDecodingOptions, addModelOptions, addSamplingOptions, decodingFromFlags, positiveInteger, samplingFromFlags, type SamplingFlags } from '../options.js';
import { loadForCli, summaryLine, type LoadFlags } from './run.js';

interface ChatOptions extends LoadFlags, SamplingFlags {
  maxTokens: number;
  system?: string;
  stats?: boolean;
  history: boolean;
}

const HISTORY_LINES = 500;

/** The input history file (up-arrow recall across sessions): `<cacheRoot()>/chat-history`. */
function historyFile(): string {
  return cachePath('chat-history');
}

function loadHistory(): string[] {
  try {
    // readline wants the newest first.
    return readFileSync(historyFile(), 'utf8').split('\n').filter((l) => l !== '').reverse().slice(0, HISTORY_LINES);
  } catch {
    return [];
  }
}

function saveHistory(lines: readonly string[]): void {
  try {
    mkdirSync(dirname(historyFile()), { recursive: true });
    writeFileSync(historyFile(), `${[...lines].slice(0, HISTORY_LINES).reverse().join('\n')}\n`);
  } catch {
    // a read-only cache is no reason to fail a chat
  }
}

/**
 * Drops the oldest turns (keeping a system message) until the rendered history plus `maxTokens`
 * fits the context. Returns how many messages were dropped, or -1 when even the last message alone
 * does not fit.
 */
function fitContext(cascade: Cascade, messages: ChatMessage[], maxTokens: number): number {
  const context = cascade.info.maxContext;
  const size = () => cascade.tokenizer.encode(cascade.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true }), { addBos: false }).length;
  let dropped = 0;
  const first = messages[0]?.role === 'system' ? 1 : 0;
  while (size() + Math.min(maxTokens, 16) > context) {
    if (messages.length - first <= 1) return -1;
    // A user message and the reply that followed it.
    const n = messages[first + 1]?.role === 'assistant' ? 2 : 1;
    messages.splice(first, n);
    dropped += n;
  }
  return dropped;
}

async function chat(opts: ChatOptions, quiet: boolean): Promise<void> {
  const terminal = process.stdin.isTTY === true && process.stdout.isTTY === true;
  const { cascade, target } = await loadForCli(opts, quiet);
  const generation: GenerateOptions = { ...decodingFromFlags(opts), maxTokens: opts.maxTokens, ...samplingFromFlags(opts) };
  const system: ChatMessage[] = opts.system ? [{ role: 'system', content: opts.system }] : [];
  let messages: ChatMessage[] = [...system];
  let replying: AbortController | undefined;
  let closed = false;
  let lastInterrupt = 0;

  const rl = readline.createInterface({
    input: process.stdin,
    output: process.stdout,
    terminal,
    prompt: '> ',
    history: opts.history && terminal ? loadHistory() : [],
    historySize: HISTORY_LINES,
    removeHistoryDuplicates: true,
  });
  if (opts.history && terminal) rl.on('history', (lines: string[]) => saveHistory(lines));
  rl.on('close', () => {
    // Ctrl-D in a terminal quits at once; the end of piped input lets the lines read so far run.
    if (!terminal) return;
    closed = true;
    replying?.abort(new Error('input closed'));
  });
  const interrupt = (): void => {
    if (replying) {
      replying.abort(new Error('interrupted'));
      return;
    }
    if (rl.line !== '') {
      // Ctrl-C on a half-typed line drops it, as in a shell.
      process.stdout.write('^C\n');
      (rl as unknown as { line: string }).line = '';
      rl.prompt();
      return;
    }
    if (Date.now() - lastInterrupt < 2000) {
      rl.close();
      return;
    }
    lastInterrupt = Date.now();
    process.stdout.write('\n(Ctrl-C again, Ctrl-D or /exit to quit)\n');
    rl.prompt();
  };
  rl.on('SIGINT', interrupt);
  // Without a terminal readline sees no Ctrl-C: the signal itself stops a reply (or quits).
  const onSignal = (): void => (terminal ? interrupt() : replying ? replying.abort(new Error('interrupted')) : rl.close());
  process.on('SIGINT', onSignal);

  if (!quiet) {
    process.stderr.write(
      `chat with ${target} (mode ${opts.mode}, up to ${opts.maxTokens} tokens a reply, context ${cascade.info.maxContext} tokens)\n` +
        '/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply\n',
    );
  }
  try {
    rl.prompt();
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        messages = [...system];
        process.stdout.write('(conversation cleared)\n');
        rl.prompt();
        continue;
      }
      if (line === '') {
        rl.prompt();
        continue;
      }
      if (line.startsWith('/')) {
        process.stdout.write(`unknown command ${line.split(/\s/)[0]}: /reset, /exit\n`);
        rl.prompt();
        continue;
      }
      messages.push({ role: 'user', content: raw });
      const dropped = fitContext(cascade, messages, opts.maxTokens);
      if (dropped < 0) {
        messages.pop();
        process.stdout.write(`(that message does not fit the context of ${cascade.info.maxContext} tokens; try --max-context)\n`);
        rl.prompt();
        continue;
      }
      if (dropped > 0 && !quiet) process.stderr.write(`(the ${dropped} oldest messages no longer fit the context and were dropped)\n`);
      replying = new AbortController();
      let reply = '';
      let stopped = false;
      try {
        for await (const piece of cascade.stream(messages, { ...generation, signal: replying.signal })) {
          reply += piece.text;
          process.stdout.write(piece.text);
        }
      } catch (error) {
        if (!replying.signal.aborted) {
          process.stdout.write('\n');
          const e = error as Error;
          process.stderr.write(`cascade-xla: ${e.name}: ${e.message}\n`);
        }
        stopped = replying.signal.aborted;
      } finally {
        replying = undefined;
      }
      // What was shown stays in the conversation, an interrupted reply included; a turn with no reply is forgotten.
      if (reply !== '') messages.push({ role: 'assistant', content: reply });
      else messages.pop();
      process.stdout.write(stopped ? ' [stopped]\n' : '\n');
      if (opts.stats && !stopped && cascade.lastStats) process.stderr.write(`(${summaryLine(cascade.lastStats, opts.mode as DecodeMode)})\n`);
      if (closed) break;
      rl.prompt();
    }
  } finally {
    process.off('SIGINT', onSignal);
    rl.close();
    await cascade.dispose();
  }
  if (terminal) process.stdout.write('\n');
}

export function chatCommand(): Command {
  const cmd = addModelOptions(new Command('chat'))
    .description(
      'Talk with a model in the terminal: each turn sends the whole conversation through the model\'s chat template and streams ' +
        'the reply. /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops a reply (twice at an empty prompt quits). ' +
        `Input lines are remembered in <cache>/chat-history (up arrow).`,
    )
    .option('--system <text>', 'a system message that starts the conversation (and survives /reset)');
  addDecodingOptions(cmd, { mode: 'speculative', branches: false }).option('--max-tokens <n>', 'most tokens per reply', positiveInteger('--max-tokens'), 256);
  return addSamplingOptions(cmd)
    .option('--max-context <n>', 'KV cache length in tokens: the conversation plus a reply (older turns are dropped to fit)', positiveInteger('--max-context'), 2048)
    .option('--stats', 'after each reply, a summary line on stderr (tokens, speed)')
    .option('--no-history', 'do not read or write the input history file')
    .addHelpText('after', '\nExamples:\n  $ cascade-xla chat\n  $ cascade-xla chat --model https://example.com/model.gguf --system "You are terse." --temperature 0.7')
    .action((opts: ChatOptions, command: Command) => chat(opts, command.optsWithGlobals().quiet === true));
}
