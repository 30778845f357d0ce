/**
 * Typed errors. Every error cascade-xla throws is a {@link CascadeError}; the subclasses say what
 * went wrong, and the message says what and where.
 *
 * @example
 * ```ts
 * try {
 *   await Runtime.open({ plugin: '/opt/missing.so' });
 * } catch (e) {
 *   if (e instanceof PluginNotFoundError) console.error('install the plugin first:', e.message);
 * }
 * ```
 * @module
 */

/** Base class of every error thrown by cascade-xla. */
export class CascadeError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** PJRT status codes (absl::StatusCode numbering) that {@link PjrtError.code} can hold. */
export const PjrtErrorCode = {
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/**
 * The PJRT plugin returned an error (a compile error, an out-of-memory, ...). `code` is the
 * plugin's PJRT_Error_Code and the message carries the plugin's own text.
 *
 * @example
 * ```ts
 * try { await rt.compile('func.func @main() { bogus }'); }
 * catch (e) { if (e instanceof PjrtError) console.log(e.code, e.message); }
 * ```
 */
export class PjrtError extends CascadeError {
  /** The PJRT_Error_Code, see {@link PjrtErrorCode}. */
  readonly code: number;
  constructor(message: string, code: number, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/**
 * No PJRT plugin could be found or fetched. The message says where we looked and what to install
 * or set (`CASCADE_PJRT_PLUGIN`, `npx cascade-xla plugin fetch cpu`).
 *
 * @example
 * ```ts
 * await Runtime.open({ plugin: '/no/such/plugin.so' }); // throws PluginNotFoundError
 * ```
 */
export class PluginNotFoundError extends CascadeError {}

/**
 * The file exists but is not a usable PJRT plugin: not a shared library, no `GetPjrtApi`, or an
 * unsupported PJRT C API version.
 *
 * @example
 * ```ts
 * await Runtime.open({ plugin: '/etc/hostname' }); // throws PluginIncompatibleError
 * ```
 */
export class PluginIncompatibleError extends CascadeError {}

/**
 * An argument or option was rejected before it reached the plugin (wrong count, shape or dtype,
 * bad option value). The message names the argument.
 *
 * @example
 * ```ts
 * await exe.execute([[]]); // throws InvalidArgumentError: @main takes 2 argument(s), got 0
 * ```
 */
export class InvalidArgumentError extends CascadeError {}

/**
 * The object was used after `close()` / `dispose()`.
 *
 * @example
 * ```ts
 * await rt.close();
 * await rt.compile(text); // throws DisposedError
 * ```
 */
export class DisposedError extends CascadeError {}

/**
 * A model or weight file is truncated, corrupt or inconsistent. The message names the file and
 * the tensor or field.
 *
 * @example
 * ```ts
 * await Cascade.load({ target: 'truncated.gguf' }); // throws ModelFormatError
 * ```
 */
export class ModelFormatError extends CascadeError {}

/**
 * A download or external tool failed (pip, the package index, a network error).
 *
 * @example
 * ```ts
 * await ensurePlugin('cpu'); // throws DownloadError when PyPI is unreachable and nothing is cached
 * ```
 */
export class DownloadError extends CascadeError {}

/**
 * The models would not fit the device's memory. Checked before anything is uploaded: the weights
 * at their precision plus the KV cache of `maxContext` tokens (target on every replica, and the
 * draft) against what the device has free: the plugin's memory stats, on the CPU plugin the
 * host's `MemAvailable`, or the `maxDeviceMemory` option / `CASCADE_DEVICE_MEMORY_LIMIT`. The
 * message gives both sizes.
 *
 * @example
 * ```ts
 * await Cascade.load({ target: 'model.gguf', maxDeviceMemory: 64 * 2 ** 20 }); // throws OutOfMemoryError
 * ```
 */
export class OutOfMemoryError extends CascadeError {}
