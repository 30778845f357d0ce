/**
 * AbortSignal plumbing shared by every long call.
 * @internal
 * @module
 */

// One real 'abort' listener per signal, whatever the number of calls waiting on it: many
// concurrent calls sharing one AbortSignal would otherwise pass Node's listener limit
// (MaxListenersExceededWarning) and keep a listener per call alive.
const subscribers = new WeakMap<AbortSignal, Set<() => void>>();

/**
 * Calls `fn` once when `signal` fires (not when it has fired already: check `signal.aborted`).
 * Returns the unsubscribe function; call it when the call settles.
 */
export function onAbort(signal: AbortSignal | undefined, fn: () => void): () => void {
  if (!signal) return () => {};
  let set = subscribers.get(signal);
  if (!set) {
    const fresh = new Set<() => void>();
    const dispatch = () => {
      subscribers.delete(signal);
      for (const f of [...fresh]) f();
    };
    signal.addEventListener('abort', dispatch, { once: true });
    subscribers.set(signal, fresh);
    // Kept with the set so the last unsubscribe can remove it.
    (fresh as Set<() => void> & { dispatch?: () => void }).dispatch = dispatch;
    set = fresh;
  }
  const entry = () => fn();
  set.add(entry);
  return () => {
    const current = subscribers.get(signal);
    if (!current || !current.delete(entry) || current.size > 0) return;
    subscribers.delete(signal);
    signal.removeEventListener('abort', (current as Set<() => void> & { dispatch?: () => void }).dispatch!);
  };
}

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
  let unsubscribe: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    unsubscribe = onAbort(signal, () => reject(abortReason(signal)));
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    unsubscribe!();
    promise.catch(() => {}); // an abandoned native promise must not become an unhandled rejection
  }
}
