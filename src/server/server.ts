/**
 * An OpenAI-compatible HTTP server over a loaded {@link Cascade}: `GET /v1/models`,
 * `POST /v1/chat/completions` and `POST /v1/completions` (plain JSON or server-sent events),
 * built on fastify. Generations run one at a time in arrival order (the Cascade's own queue); a
 * client that disconnects aborts its generation, running or queued. Each request continues one of
 * a few conversation caches ({@link ServerOptions.slots}), the one whose last request shares the
 * longest prefix with its prompt, so clients taking turns keep their prompts cached.
 *
 * @example
 * ```ts
 * import { Cascade, ensureDefaultModel, serve } from 'cascade-xla';
 * const cascade = await Cascade.load({ target: (await ensureDefaultModel()).path });
 * const server = await serve({ cascade, port: 8080 });
 * console.log(`listening on ${server.url}`); // point the openai client's baseURL at `${server.url}/v1`
 * // ... later
 * await server.close();
 * await cascade.dispose();
 * ```
 * @module
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';

import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';

import type { Cascade, CascadeLoadOptions, CascadeStats, GenerateOptions, GenerationResult, StreamPiece } from '../cascade/cascade.js';
import { InvalidArgumentError } from '../errors.js';
import { isAbortError, ServerRequestError, toServerError } from './errors.js';
import {
  chatCompletionSchema,
  completionSchema,
  type OpenAIChatCompletion,
  type OpenAIChatCompletionChunk,
  type OpenAIChatCompletionRequest,
  type OpenAICompletion,
  type OpenAICompletionRequest,
  type OpenAIFinishReason,
  type OpenAIModel,
  type OpenAIUsage,
} from './openai-types.js';
import { planChat, planCompletion, type GenerationPlan, type PlanContext } from './requests.js';
import { SlotPool, type SlotLease } from './slots.js';
import { validationError, type SchemaError } from './validation.js';

/** Decoding options every request of a server starts from (requests set sampling and limits). */
export type ServerGenerateDefaults = Pick<GenerateOptions, 'mode' | 'k0' | 'k1' | 'branches' | 'dynamicHorizon' | 'lookahead'>;

/** One line of the request log (see {@link ServerOptions.onRequestLog}). */
export interface RequestLogEntry {
  /** HTTP method. */
  method: string;
  /** Path and query. */
  url: string;
  /** Status code sent (200 for a stream, whatever happened after the headers). */
  status: number;
  /** Milliseconds from the request's arrival to the end of the response (or the disconnect). */
  ms: number;
  /** False when the connection closed before the response was complete (the client went away). */
  completed: boolean;
  /** For a server error (5xx other than 503), or an error sent inside a stream: its message. */
  error?: string;
}

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** The loaded model. The server does not dispose it; dispose it after {@link CascadeServer.close}. */
  cascade: Cascade;
  /** The model's name in `GET /v1/models` and in responses; requests naming another model get a 400. Default `'cascade-xla'`. */
  modelId?: string;
  /** Other names requests may use for the model (e.g. its catalogue aliases); responses still say `modelId`. */
  modelAliases?: string[];
  /** Decoding mode and proposal settings for every request (default: the Cascade's defaults, `mode: 'speculative'`). */
  defaults?: ServerGenerateDefaults;
  /**
   * Tokens to generate when a request sets no `max_tokens` / `max_completion_tokens`. Default:
   * what the context has room for on `/v1/chat/completions`, 16 on `/v1/completions` (OpenAI's defaults).
   */
  defaultMaxTokens?: number;
  /**
   * Most generation requests held at once, running and queued; more are answered 429 with a
   * `retry-after` header. Default 64.
   */
  maxQueue?: number;
  /**
   * Conversation caches ({@link Cascade.createConversationCache}) the server keeps for prompt
   * caching across clients, as llama.cpp's slots. Each request goes to the slot whose last request
   * (prompt and reply) shares the longest common prefix with its prompt, when that prefix is at
   * least half of the shorter of the two (but to an unused slot, while there is one, rather than
   * keep less than three quarters of the matched slot's tokens); otherwise to the least recently
   * used slot. The shared prefix is not prefilled again (`usage.prompt_tokens_details.cached_tokens`).
   * Replies are exact whichever slot serves them. Each slot in use holds a target and a draft KV
   * cache of the context's length; beyond the Cascade's {@link CascadeLoadOptions.maxSequences}
   * (default 4) the slots evict each other's caches, so keep this at most that. Default 4 (or the
   * Cascade's `maxSequences`, `cascade.info.maxSequences`, when that is smaller). The slots are
   * freed when the server closes.
   */
  slots?: number;
  /** When set, every `/v1` request must carry `Authorization: Bearer <apiKey>` (else 401). */
  apiKey?: string;
  /**
   * Lets web pages of this origin call the server from a browser (CORS): `'*'` for any, or one
   * origin such as `'http://localhost:3000'`. Default: none (browsers block cross-origin calls).
   */
  corsOrigin?: string;
  /**
   * On shutdown ({@link CascadeServer.close} or fastify's `close()`), how long generations in
   * flight may run on before they are aborted (their clients get a 503, or an error event on a
   * stream). New requests are refused with 503 at once. Default 5000 ms.
   */
  shutdownGraceMs?: number;
  /** Largest request body in bytes (default 4 MiB). */
  bodyLimit?: number;
  /**
   * A streamed response whose client reads nothing for this long (its socket buffers full) is
   * ended, so one stalled reader cannot hold the model from the requests queued behind it.
   * Default 60000 ms.
   */
  stallTimeoutMs?: number;
  /** Called once per request when its response ends or its connection closes. */
  onRequestLog?: (entry: RequestLogEntry) => void;
}

/** Options of {@link serve}: those of {@link createServer} and where to listen. */
export interface ServeOptions extends ServerOptions {
  /** Interface to bind (default `127.0.0.1`; `0.0.0.0` for every interface). */
  host?: string;
  /** TCP port (default 8080; 0 picks a free one, see {@link CascadeServer.port}). */
  port?: number;
}

/** A listening server, from {@link serve}. */
export interface CascadeServer {
  /** The fastify instance (add routes or hooks before listening, inject requests in tests). */
  readonly app: FastifyInstance;
  /** The bound interface. */
  readonly host: string;
  /** The bound port (the one chosen when `port` was 0). */
  readonly port: number;
  /** `http://host:port`; the OpenAI base URL is `${url}/v1`. */
  readonly url: string;
  /**
   * Stops accepting connections, lets generations in flight finish for
   * {@link ServerOptions.shutdownGraceMs}, aborts the rest, and resolves once every connection
   * has closed. The Cascade stays loaded. Idempotent.
   */
  close(): Promise<void>;
}

type Kind = 'chat' | 'completion';

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
} as const;

/** The reason a request's generation was aborted because its client went away. */
class ClientDisconnected extends Error {
  constructor() {
    super('the client disconnected');
    this.name = 'AbortError';
  }
}

/** `'stop'` for a stop string or end-of-generation token, `'length'` for the token limit or a full context. */
function finishReason(stats: CascadeStats): OpenAIFinishReason {
  return stats.stopReason === 'max_tokens' || stats.stopReason === 'context' ? 'length' : 'stop';
}

function usage(stats: CascadeStats): OpenAIUsage {
  return {
    prompt_tokens: stats.promptTokens,
    completion_tokens: stats.generatedTokens,
    total_tokens: stats.promptTokens + stats.generatedTokens,
    // The prompt tokens whose KV cache was reused from the previous generation (not prefilled again).
    prompt_tokens_details: { cached_tokens: stats.cachedTokens ?? 0 },
  };
}

function bearerMatches(header: string | undefined, key: string): boolean {
  const match = /^Bearer\s+(.+)$/i.exec(header ?? '');
  if (!match) return false;
  const given = Buffer.from(match[1]!.trim());
  const wanted = Buffer.from(key);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function checkOptions(options: ServerOptions): void {
  if (!options || typeof options !== 'object' || !options.cascade) throw new InvalidArgumentError('createServer: options.cascade (a loaded Cascade) is required');
  const positive = (name: string, v: unknown, min: number) => {
    if (v !== undefined && (typeof v !== 'number' || !Number.isInteger(v) || v < min)) {
      throw new InvalidArgumentError(`createServer: ${name} must be an integer >= ${min}, got ${String(v)}`);
    }
  };
  positive('defaultMaxTokens', options.defaultMaxTokens, 1);
  positive('maxQueue', options.maxQueue, 1);
  positive('shutdownGraceMs', options.shutdownGraceMs, 0);
  positive('bodyLimit', options.bodyLimit, 1);
  positive('stallTimeoutMs', options.stallTimeoutMs, 1);
  positive('slots', options.slots, 1);
  if (options.modelId !== undefined && (typeof options.modelId !== 'string' || options.modelId === '')) {
    throw new InvalidArgumentError('createServer: modelId must be a non-empty string');
  }
  if (options.modelAliases !== undefined && (!Array.isArray(options.modelAliases) || options.modelAliases.some((a) => typeof a !== 'string' || a === ''))) {
    throw new InvalidArgumentError('createServer: modelAliases must be an array of non-empty strings');
  }
  if (options.corsOrigin !== undefined && (typeof options.corsOrigin !== 'string' || options.corsOrigin === '')) {
    throw new InvalidArgumentError("createServer: corsOrigin must be '*' or an origin such as 'http://localhost:3000'");
  }
  if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === '')) {
    throw new InvalidArgumentError('createServer: apiKey must be a non-empty string');
  }
}

/**
 * Builds the OpenAI-compatible fastify app over `options.cascade`, not listening yet (call
 * `app.listen`, or use {@link serve}). `app.close()` shuts it down as {@link CascadeServer.close}
 * describes.
 *
 * @example
 * ```ts
 * const app = createServer({ cascade, modelId: 'smollm2' });
 * const res = await app.inject({ method: 'GET', url: '/v1/models' });
 * console.log(res.json().data[0].id); // 'smollm2'
 * ```
 */
export function createServer(options: ServerOptions): FastifyInstance {
  checkOptions(options);
  const { cascade } = options;
  const modelId = options.modelId ?? 'cascade-xla';
  const maxQueue = options.maxQueue ?? 64;
  const graceMs = options.shutdownGraceMs ?? 5000;
  const stallMs = options.stallTimeoutMs ?? 60_000;
  /** The error each failed response reports in its log entry. */
  const failures = new WeakMap<ServerResponse, string>();
  const created = Math.floor(Date.now() / 1000);
  const slots = new SlotPool(cascade, options.slots ?? defaultSlots(cascade));
  const ctx: PlanContext = { cascade, modelId, modelNames: new Set([modelId, ...(options.modelAliases ?? [])]), defaults: { ...options.defaults }, defaultMaxTokens: options.defaultMaxTokens };
  /** Controllers of the generations in flight (running or queued in the Cascade). */
  const active = new Set<AbortController>();
  let closing = false;
  /** Set once the grace period is over: generations are aborted, and none starts. */
  let aborting = false;
  let graceTimer: NodeJS.Timeout | undefined;

  const app = Fastify({
    logger: false,
    bodyLimit: options.bodyLimit ?? 4 * 1024 * 1024,
    // Requests arriving while closing get our own 503 (OpenAI's error shape), from the hook below.
    return503OnClosing: false,
    // No coercion: `"temperature": "1"` is a type error, not 1.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false, verbose: true } },
  });

  // `curl -d '{...}'` sends application/x-www-form-urlencoded unless told otherwise: those
  // bodies, and text/plain ones, are read as JSON too.
  app.addContentTypeParser(['application/x-www-form-urlencoded', 'text/plain'], { parseAs: 'string' }, app.getDefaultJsonParser('error', 'error'));

  app.addHook('onRequest', (request, reply, done) => {
    const started = performance.now();
    const res = reply.raw;
    if (options.onRequestLog) {
      const log = options.onRequestLog;
      res.once('close', () => {
        const error = failures.get(res);
        log({
          method: request.method,
          url: request.url,
          status: res.statusCode,
          ms: performance.now() - started,
          completed: res.writableFinished,
          ...(error === undefined ? {} : { error }),
        });
      });
    }
    // While closing, a connection whose response has ended is closed too (keep-alive or not).
    res.once('finish', () => {
      if (closing) setImmediate(() => app.server.closeIdleConnections());
    });
    if (options.corsOrigin !== undefined) {
      reply.header('access-control-allow-origin', options.corsOrigin);
      if (options.corsOrigin !== '*') reply.header('vary', 'Origin');
      if (request.method === 'OPTIONS') {
        // A browser's preflight: say what the real request may use, and answer nothing else.
        void reply
          .code(204)
          .header('access-control-allow-methods', 'GET, POST, OPTIONS')
          .header('access-control-allow-headers', request.headers['access-control-request-headers'] ?? 'authorization, content-type')
          .header('access-control-max-age', '600')
          .send();
        return;
      }
    }
    if (closing) {
      reply.header('connection', 'close');
      done(new ServerRequestError(503, 'the server is shutting down', { code: 'server_shutting_down' }));
      return;
    }
    if (options.apiKey !== undefined && request.url.startsWith('/v1/') && !bearerMatches(request.headers.authorization, options.apiKey)) {
      done(
        new ServerRequestError(401, 'Incorrect or missing API key: send it as "Authorization: Bearer <key>"', {
          type: 'authentication_error',
          code: 'invalid_api_key',
        }),
      );
      return;
    }
    done();
  });

  app.setErrorHandler((error: FastifyError | Error, request, reply) => {
    const e = errorResponse(error);
    if (e.status === 429) reply.header('retry-after', '1');
    if (e.status >= 500 && e.status !== 503) failures.set(reply.raw, error.stack ?? error.message);
    void reply.code(e.status).send(e.body());
  });

  app.setNotFoundHandler((request, reply) => {
    const e = new ServerRequestError(404, `Unknown route: ${request.method} ${request.url.split('?')[0]}`, { code: 'not_found' });
    void reply.code(404).send(e.body());
  });

  app.addHook('preClose', (done) => {
    closing = true;
    const abortAll = () => {
      aborting = true;
      for (const c of active) c.abort(new ServerRequestError(503, 'the server is shutting down', { code: 'server_shutting_down' }));
    };
    if (graceMs === 0) abortAll();
    else graceTimer = setTimeout(abortAll, graceMs);
    done();
  });
  app.addHook('onClose', async () => {
    clearTimeout(graceTimer);
    // After the generations still queued (the Cascade's queue); a disposed Cascade has nothing to free.
    await slots.close();
  });

  app.get('/health', async () => ({ status: 'ok' }));

  const model = (): OpenAIModel => ({ id: modelId, object: 'model', created, owned_by: 'cascade-xla' });
  app.get('/v1/models', async () => ({ object: 'list', data: [model()] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    if (!ctx.modelNames.has(request.params.id)) {
      throw new ServerRequestError(404, `The model '${request.params.id}' does not exist on this server; it serves '${modelId}'`, {
        param: 'model',
        code: 'model_not_found',
      });
    }
    return model();
  });

  app.post<{ Body: OpenAIChatCompletionRequest }>('/v1/chat/completions', { schema: { body: chatCompletionSchema } }, async (request, reply) =>
    generation('chat', planChat(request.body, ctx), reply),
  );
  app.post<{ Body: OpenAICompletionRequest }>('/v1/completions', { schema: { body: completionSchema } }, async (request, reply) =>
    generation('completion', planCompletion(request.body, ctx), reply),
  );

  /** Runs one generation request: plain JSON, or server-sent events. */
  async function generation(kind: Kind, plan: GenerationPlan, reply: FastifyReply): Promise<unknown> {
    if (aborting) throw new ServerRequestError(503, 'the server is shutting down', { code: 'server_shutting_down' });
    if (active.size >= maxQueue) {
      throw new ServerRequestError(429, `The server is busy: ${active.size} requests are running or queued (the most it holds); retry later`, {
        type: 'rate_limit_error',
        code: 'queue_full',
      });
    }
    const controller = new AbortController();
    const res = reply.raw;
    // The connection closed before the response was complete: the client went away.
    const onClose = () => {
      if (!res.writableFinished) controller.abort(new ClientDisconnected());
    };
    res.once('close', onClose);
    // Gone already (while the body was read): nothing to generate for.
    if (res.destroyed || res.socket?.destroyed === true) controller.abort(new ClientDisconnected());
    active.add(controller);
    const signal = controller.signal;
    let lease: SlotLease;
    try {
      lease = slots.acquire(plan.promptIds);
    } catch (error) {
      res.off('close', onClose);
      active.delete(controller);
      throw error;
    }
    const options = { ...plan.options, signal, cache: lease.cache };
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
    const now = Math.floor(Date.now() / 1000);
    try {
      if (plan.stream) {
        await streamGeneration(kind, plan, options, id, now, reply, lease);
        return reply;
      }
      const r = await cascade.generate(plan.prompt, options).catch((error: unknown) => {
        lease.failed();
        throw error;
      });
      lease.done(r);
      if (kind === 'chat') {
        const body: OpenAIChatCompletion = {
          id,
          object: 'chat.completion',
          created: now,
          model: modelId,
          choices: [{ index: 0, message: { role: 'assistant', content: r.text, refusal: null }, logprobs: null, finish_reason: finishReason(r.stats) }],
          usage: usage(r.stats),
        };
        return body;
      }
      const body: OpenAICompletion = {
        id,
        object: 'text_completion',
        created: now,
        model: modelId,
        choices: [{ index: 0, text: (plan.echo ?? '') + r.text, logprobs: null, finish_reason: finishReason(r.stats) }],
        usage: usage(r.stats),
      };
      return body;
    } catch (error) {
      if (signal.reason instanceof ClientDisconnected || (isAbortError(error) && res.destroyed)) {
        // Nobody to answer: the connection is gone.
        reply.hijack();
        res.destroy();
        return reply;
      }
      throw error;
    } finally {
      res.off('close', onClose);
      active.delete(controller);
    }
  }

  /**
   * Streams a generation as server-sent events. The headers wait for the first piece of text, so
   * a request the Cascade rejects (or one aborted while queued) still gets a proper status code;
   * after them, an error is sent as an error event and the stream ends.
   */
  async function streamGeneration(
    kind: Kind,
    plan: GenerationPlan,
    options: GenerateOptions,
    id: string,
    now: number,
    reply: FastifyReply,
    lease: SlotLease,
  ): Promise<void> {
    const signal = options.signal!;
    const pieces = cascade.stream(plan.prompt, options)[Symbol.asyncIterator]();
    let ended = false;
    try {
      let next: IteratorResult<StreamPiece, GenerationResult> = await pieces.next();
      reply.hijack();
      const res = reply.raw;
      // Headers set on the reply before (CORS) go out with the stream's own.
      for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) res.setHeader(name, value);
      res.writeHead(200, SSE_HEADERS);
      const chunk = (text: string | undefined, finish: OpenAIFinishReason | null, role = false): OpenAIChatCompletionChunk | OpenAICompletion => {
        // With include_usage, every chunk carries `usage: null` but the last (OpenAI's shape).
        const tail = plan.includeUsage ? { usage: null } : {};
        if (kind === 'chat') {
          const delta = { ...(role ? { role: 'assistant' as const } : {}), ...(text !== undefined ? { content: text } : {}) };
          return { id, object: 'chat.completion.chunk', created: now, model: modelId, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...tail };
        }
        return { id, object: 'text_completion', created: now, model: modelId, choices: [{ index: 0, text: text ?? '', logprobs: null, finish_reason: finish }], ...tail };
      };
      try {
        if (kind === 'chat') await send(res, chunk('', null, true), signal, stallMs);
        if (plan.echo) await send(res, chunk(plan.echo, null), signal, stallMs);
        for (; !next.done; next = await pieces.next()) await send(res, chunk(next.value.text, null), signal, stallMs);
        // The stream has ended: its return value is the whole result.
        ended = true;
        lease.done(next.value);
        const stats = next.value.stats;
        await send(res, chunk(kind === 'chat' ? undefined : '', finishReason(stats)), signal, stallMs);
        if (plan.includeUsage) {
          await send(res, { id, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: now, model: modelId, choices: [], usage: usage(stats) }, signal, stallMs);
        }
        res.end('data: [DONE]\n\n');
      } catch (error) {
        if (signal.reason instanceof ClientDisconnected || res.destroyed) {
          res.destroy();
          return;
        }
        // Headers are out: the error goes in the stream (the openai client raises it).
        const e = toServerError(error);
        failures.set(res, e.status >= 500 && e.status !== 503 && error instanceof Error ? (error.stack ?? e.message) : e.message);
        res.end(`data: ${JSON.stringify(e.body())}\n\n`);
      }
    } finally {
      if (!ended) lease.failed();
      await pieces.return?.(undefined as unknown as GenerationResult);
    }
  }

  return app;
}

/** {@link ServerOptions.slots}'s default: 4, or the Cascade's `maxSequences` when smaller. */
function defaultSlots(cascade: Cascade): number {
  return Math.min(4, cascade.info.maxSequences);
}

/**
 * Writes one server-sent event, waiting while the client is slow to read (backpressure). A client
 * that reads nothing for `stallMs` loses its connection (whose close aborts the generation).
 */
async function send(res: ServerResponse, data: unknown, signal: AbortSignal, stallMs: number): Promise<void> {
  if (res.destroyed) throw new ClientDisconnected();
  if (res.write(`data: ${JSON.stringify(data)}\n\n`)) return;
  const stalled = setTimeout(() => res.destroy(), stallMs);
  try {
    await once(res, 'drain', { signal });
  } finally {
    clearTimeout(stalled);
  }
}

/** The response for an error thrown while handling a request. */
function errorResponse(error: FastifyError | Error): ServerRequestError {
  if (error instanceof ServerRequestError) return error;
  const fe = error as FastifyError & { validation?: SchemaError[] };
  if (Array.isArray(fe.validation)) return validationError(fe.validation);
  if (fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (fe.statusCode === 400 && error instanceof SyntaxError)) {
    return new ServerRequestError(400, `We could not parse the JSON body of your request: ${error.message}`, { code: 'invalid_json', cause: error });
  }
  if (fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') {
    return new ServerRequestError(400, 'The request body is empty; send a JSON object', { code: 'invalid_json', cause: error });
  }
  if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new ServerRequestError(415, `Unsupported content type: send the body as JSON with "Content-Type: application/json"`, {
      code: 'unsupported_media_type',
      cause: error,
    });
  }
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new ServerRequestError(fe.statusCode, error.message, { code: fe.code ?? null, cause: error });
  }
  return toServerError(error);
}

/**
 * Starts the OpenAI-compatible server over a loaded Cascade and resolves once it listens.
 *
 * @example
 * ```ts
 * import OpenAI from 'openai';
 * const server = await serve({ cascade, port: 0, modelId: 'smollm2' });
 * const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
 * const r = await client.chat.completions.create({ model: 'smollm2', messages: [{ role: 'user', content: 'Hi!' }], max_tokens: 16 });
 * console.log(r.choices[0].message.content, r.usage);
 * await server.close();
 * ```
 */
export async function serve(options: ServeOptions): Promise<CascadeServer> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 8080;
  if (typeof host !== 'string' || host === '') throw new InvalidArgumentError('serve: host must be a non-empty string');
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidArgumentError(`serve: port must be an integer in 0..65535, got ${String(port)}`);
  }
  const app = createServer(options);
  await app.listen({ host, port });
  const address = app.server.address();
  const bound = typeof address === 'object' && address ? address.port : port;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  let closed: Promise<void> | undefined;
  return {
    app,
    host,
    port: bound,
    url: `http://${urlHost}:${bound}`,
    close: () => (closed ??= closeApp(app, options.shutdownGraceMs ?? 5000)),
  };
}

/** `app.close()`, then (after the grace period and a little more) every connection still open is closed. */
async function closeApp(app: FastifyInstance, graceMs: number): Promise<void> {
  const closing = app.close();
  const force = setTimeout(() => app.server.closeAllConnections(), graceMs + 2000);
  try {
    await closing;
  } finally {
    clearTimeout(force);
  }
}
