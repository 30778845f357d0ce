/**
 * The server's errors and their mapping to OpenAI's error shape and HTTP status codes.
 * @module
 */
import { CascadeError, DisposedError, InvalidArgumentError } from '../errors.js';
import type { OpenAIErrorBody } from './openai-types.js';

/**
 * A request the server answers with an error status: its HTTP `status`, OpenAI's error `type`,
 * the request field at fault (`param`) and a machine-readable `code`. Thrown by the request
 * handlers and turned into an {@link OpenAIErrorBody} response.
 *
 * @example
 * ```ts
 * throw new ServerRequestError(400, "'n' must be 1: this server returns one choice per request", { param: 'n' });
 * ```
 */
export class ServerRequestError extends CascadeError {
  /** HTTP status code (4xx for requests at fault, 5xx for the server's own failures). */
  readonly status: number;
  /** OpenAI's error type: `'invalid_request_error'`, `'authentication_error'`, `'rate_limit_error'`, `'server_error'`. */
  readonly type: string;
  /** The request field at fault, or null. */
  readonly param: string | null;
  /** Machine-readable code, or null. */
  readonly code: string | null;

  constructor(status: number, message: string, details: { type?: string; param?: string | null; code?: string | null; cause?: unknown } = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.status = status;
    this.type = details.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = details.param ?? null;
    this.code = details.code ?? null;
  }

  /** The response body. */
  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** True for the `AbortError` a generation rejects with when its signal fires. */
export function isAbortError(error: unknown): boolean {
  return (error instanceof Error || error instanceof DOMException) && error.name === 'AbortError';
}

/**
 * Maps what a generation threw to the response: input errors (invalid arguments, such as a
 * sampling option the engine rejects) are 400s, a disposed engine (the server is shutting down)
 * is a 503, everything else a 500.
 */
export function toServerError(error: unknown): ServerRequestError {
  if (error instanceof ServerRequestError) return error;
  if (error instanceof InvalidArgumentError) return new ServerRequestError(400, error.message, { cause: error });
  if (error instanceof DisposedError) {
    return new ServerRequestError(503, 'the server is shutting down', { code: 'server_shutting_down', cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  const kind = error instanceof CascadeError ? `${error.name}: ` : '';
  return new ServerRequestError(500, `internal error: ${kind}${message}`, { cause: error });
}
