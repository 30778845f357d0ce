import { createServer } from 'node:net';
import path from 'node:path';

import { Command } from 'commander';

import { findCatalogModel } from '../../models/catalog.js';
import { serve } from '../../server/server.js';
import { addDecodingOptions, addModelOptions, decodingFromFlags, engineDefaults, positiveInteger } from '../options.js';
import { loadForCli, type LoadFlags } from './run.js';

interface ServeOptions extends LoadFlags {
  host: string;
  port: number;
  modelName?: string;
  branches: number;
  maxTokens?: number;
  maxQueue: number;
  slots?: number;
  apiKey?: string;
  cors?: string;
  shutdownGrace: number;
  quiet?: boolean;
}

const port = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`--port must be an integer in 0..65535, got '${v}'`);
  return n;
};

const nonNegativeInteger = (flag: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} must be an integer >= 0, got '${v}'`);
  return n;
};

/** The id a model file or folder is served under: its name without the extension. */
export function modelIdFor(target: string): string {
  const base = path.basename(target.replace(/[\\/]+$/, ''));
  return base.replace(/\.(gguf|safetensors)$/i, '') || 'cascade-xla';
}

/** The catalogue name and aliases of `spec` when it names a catalogue model (else none). */
function catalogNames(spec: string): string[] {
  const entry = findCatalogModel(spec);
  return entry ? [entry.name, ...entry.aliases] : [];
}

/** Fails at once when host:port cannot be bound, rather than after the model has loaded. */
async function checkBindable(host: string, port: number): Promise<void> {
  if (port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (e: NodeJS.ErrnoException) =>
      reject(new Error(e.code === 'EADDRINUSE' ? `${host}:${port} is in use (another server?); pick another --port` : `cannot listen on ${host}:${port}: ${e.message}`)),
    );
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}

async function run(opts: ServeOptions): Promise<void> {
  const progress = (m: string) => process.stderr.write(`${m}\n`);
  await checkBindable(opts.host, opts.port);
  // The models by path, URL or catalogue name, loaded with the warm-up (as `run` and `chat` do).
  // One resident KV cache per slot, so the slots do not evict each other's.
  const fewest = engineDefaults()?.maxSequences ?? 1;
  const { cascade, target } = await loadForCli({ ...opts, maxSequences: opts.slots === undefined ? undefined : Math.max(fewest, opts.slots) }, opts.quiet === true);
  const modelId = opts.modelName ?? modelIdFor(target);
  let server;
  try {
    server = await serve({
      cascade,
      host: opts.host,
      port: opts.port,
      modelId,
      // A catalogue model also answers to its catalogue names (e.g. 'default', 'smollm2').
      modelAliases: catalogNames(opts.model ?? 'default'),
      defaults: decodingFromFlags(opts),
      defaultMaxTokens: opts.maxTokens,
      maxQueue: opts.maxQueue,
      ...(opts.slots === undefined ? {} : { slots: opts.slots }),
      apiKey: opts.apiKey ?? (process.env['CASCADE_API_KEY'] || undefined),
      shutdownGraceMs: opts.shutdownGrace,
      ...(opts.cors === undefined ? {} : { corsOrigin: opts.cors }),
      onRequestLog: opts.quiet
        ? undefined
        : (e) =>
            progress(
              `${new Date().toISOString()} ${e.method} ${e.url} ${e.status} ${e.ms.toFixed(0)} ms${e.completed ? '' : ' (client disconnected)'}` +
                (e.error === undefined ? '' : `\n  ${e.error.replace(/\n/g, '\n  ')}`),
            ),
    });
  } catch (error) {
    await cascade.dispose();
    throw error;
  }
  // The one line on stdout: scripts and tests read the address from it.
  process.stdout.write(`listening on ${server.url}\n`);
  progress(
    `serving '${modelId}' (${cascade.info.target.family}, ${cascade.info.target.layers} layers, ${cascade.info.targetPrecision}; mode ${opts.mode}; context ${cascade.info.maxContext} tokens)\n` +
      `OpenAI base URL: ${server.url}/v1   (Ctrl-C stops; a second Ctrl-C aborts the requests in flight)`,
  );

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        progress(`${signal} again: aborting the requests in flight`);
        server.app.server.closeAllConnections();
        return;
      }
      stopping = true;
      progress(`${signal}: closing (requests in flight get ${opts.shutdownGrace} ms to finish)`);
      void server
        .close()
        .catch((e: unknown) => progress(`closing the server failed: ${e instanceof Error ? e.message : String(e)}`))
        .then(() => cascade.dispose())
        .finally(() => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          resolve();
        });
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  progress('stopped');
}

export function serveCommand(): Command {
  const cmd = addModelOptions(new Command('serve'))
    .description(
      'Serve the model over an OpenAI-compatible HTTP API: GET /v1/models, POST /v1/chat/completions and POST /v1/completions, ' +
        'plain or streamed (server-sent events), with usage, stop strings and the usual sampling options. Generations run one ' +
        'at a time in arrival order; a client that disconnects aborts its own. Every decoding mode returns the target model\'s ' +
        'exact output, so --mode only changes the speed.',
    )
    .option('--host <host>', 'interface to bind (0.0.0.0 for every interface; consider --api-key then)', '127.0.0.1')
    .option('--port <port>', 'TCP port (0 picks a free one; the address is printed on stdout)', port, 8080)
    .option('--model-name <id>', 'the model id clients send and /v1/models lists (default: the file name without its extension)');
  return addDecodingOptions(cmd, { mode: 'speculative', branches: true })
    .option('--max-context <n>', 'KV cache length in tokens: prompt plus reply must fit', positiveInteger('--max-context'), engineDefaults()?.maxContext)
    .option('--max-tokens <n>', 'tokens to generate when a request sets no max_tokens (default: the room left in the context; 16 on /v1/completions)', positiveInteger('--max-tokens'))
    .option('--max-queue <n>', 'most requests running or queued at once; more get 429', positiveInteger('--max-queue'), 64)
    .option(
      '--slots <n>',
      `conversation caches kept for prompt caching across clients: each request continues the one whose last request shares the longest prefix with its prompt (default: the library's maxSequences${engineDefaults() ? `, ${engineDefaults()!.maxSequences}` : ''})`,
      positiveInteger('--slots'),
    )
    .option('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1 requests (or set CASCADE_API_KEY)')
    .option('--cors <origin>', "let web pages of this origin call the server from a browser ('*' for any)")
    .option('--shutdown-grace <ms>', 'on SIGINT/SIGTERM, how long requests in flight may finish before they are aborted', nonNegativeInteger('--shutdown-grace'), 5000)
    .option('--quiet', 'no loading progress, and no line per request on stderr')
    .addHelpText(
      'after',
      `
Endpoints (OpenAI's request and response shapes; errors as { error: { message, type, param, code } }):
  GET  /v1/models              the served model
  POST /v1/chat/completions    messages rendered with the model's chat template
  POST /v1/completions         raw text prompt
  GET  /health                 { "status": "ok" }

Request fields: max_tokens / max_completion_tokens, temperature (default 1), top_p, seed, stop (up to 4),
stream, stream_options.include_usage, presence_penalty, frequency_penalty, logit_bias, and llama.cpp's
top_k, min_p, repeat_penalty, repeat_last_n. n must be 1; logprobs, tools and JSON response formats are
refused with a 400.
See docs/serving.md.

Examples:
  $ cascade-xla serve                                   # default model on http://127.0.0.1:8080
  $ cascade-xla serve --port 0 --mode target --max-context 2048
  $ curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
      -d '{"messages":[{"role":"user","content":"Why is the sky blue?"}],"max_tokens":64}'`,
    )
    // `--quiet` may also be the program's global option (commander gives it to the parent then).
    .action((opts: ServeOptions, cmd: Command) => run({ ...opts, quiet: opts.quiet === true || cmd.optsWithGlobals().quiet === true }));
}
