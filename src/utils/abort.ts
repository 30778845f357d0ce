/**
 * AbortSignal plumbing shared by every long call.
 * @internal
 * @module
 */

/** Throws the signal's reason if it has already fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortReason(signal);
}

/** The signal's reason as an Error (a DOMException named AbortError unless the caller gave one). */
export function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  return new DOMException(reason === undefined ? 'The operation was aborted' : String(reason), 'AbortError');
}

/**
 * Settles with `promise`, or rejects as soon as `signal` fires. Native work that cannot be
 * interrupted keeps running in the background and its result is dropped.
 */
export async function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  throwIfAborted(signal);
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort!);
    promise.catch(() => {}); // an abandoned native promise must not become an unhandled rejection
  }
}
