/**
 * The PJRT runtime: open a plugin, list its devices, compile StableHLO and run it on one or
 * several devices (pmap style: one replica per device).
 * @module
 */
import { DisposedError, InvalidArgumentError } from '../errors.js';
import { call, callSync, native, type NativeClient, type NativeExecutable } from '../native.js';
import { resolvePlugin, type PluginKind } from '../plugin/index.js';
import { raceAbort, throwIfAborted } from '../utils/abort.js';
import { checkTensor, type Tensor, type TensorType } from './tensor.js';

/** Options of {@link Runtime.open}. */
export interface RuntimeOptions {
  /**
   * `'cpu'` (default: the XLA CPU plugin, downloaded into the cache on first use), `'cuda'`,
   * `'tpu'`, or the path of any PJRT plugin `.so`. `CASCADE_PJRT_PLUGIN` overrides `'cpu'`.
   */
  plugin?: 'cpu' | 'cuda' | 'tpu' | (string & {});
  /**
   * How many devices to use. On the CPU plugin this creates that many CPU devices
   * (`cpu_device_count`, default 4 in XLA); on other plugins it uses the first `devices` devices.
   */
  devices?: number;
  /** Download the plugin if it is not cached (default true; `CASCADE_SKIP_PLUGIN_DOWNLOAD=1` turns it off). */
  download?: boolean;
  /** Progress lines while a plugin downloads. */
  onProgress?: (message: string) => void;
  /** Cancels the open (plugin download or load). */
  signal?: AbortSignal;
}

/** A memory space of a device ("device", "pinned_host", "unpinned_host", ...). */
export interface MemoryInfo {
  id: number;
  kind: string;
  /** True for the device's default memory, where weights and activations live. */
  isDefault: boolean;
}

/** An addressable device of the runtime. */
export interface DeviceInfo {
  /** Position in {@link Runtime.devices}; replica `i` of a compiled program runs on device index `i`. */
  index: number;
  /** The plugin's global device id. */
  id: number;
  /** e.g. `"cpu"` or `"NVIDIA H200"`. */
  kind: string;
  description: string;
  memories: MemoryInfo[];
}

/** Options of {@link Runtime.compile}. */
export interface CompileOptions {
  /** Number of replicas, one per device (devices 0..replicas-1). Default 1. */
  replicas?: number;
  signal?: AbortSignal;
}

/** Options of {@link Executable.execute}. */
export interface ExecuteOptions {
  signal?: AbortSignal;
}

/**
 * A compiled program, loaded on `replicas` devices.
 *
 * @example
 * ```ts
 * const exe = await rt.compile(text, { replicas: 2 });
 * const out = await exe.execute([[x0], [x1]]); // out[device][output]
 * exe.dispose();
 * ```
 */
export class Executable {
  /** Parameter types of `@main`, in order. */
  readonly parameters: readonly TensorType[];
  /** Result types of `@main`, in order. */
  readonly results: readonly TensorType[];
  /** Number of replicas (devices) it runs on. */
  readonly replicas: number;
  #native: NativeExecutable | undefined;
  #onDispose: (e: Executable) => void;

  /** @internal */
  constructor(nativeExe: NativeExecutable, onDispose: (e: Executable) => void) {
    const sig = callSync(() => nativeExe.signature());
    this.parameters = sig.parameters as TensorType[];
    this.results = sig.results as TensorType[];
    this.replicas = sig.replicas;
    this.#native = nativeExe;
    this.#onDispose = onDispose;
  }

  /** True once {@link dispose} (or the runtime's close) has run. */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  /**
   * Runs the program on every device. `inputs[d]` are device `d`'s arguments; the result
   * `out[d][k]` is device `d`'s `k`-th output. Count, dtype and shape are checked before the
   * plugin sees them ({@link InvalidArgumentError}). Runs off the JS thread.
   */
  async execute(inputs: Tensor[][], options: ExecuteOptions = {}): Promise<Tensor[][]> {
    const exe = this.#native;
    if (!exe) throw new DisposedError('execute: the executable has been disposed');
    throwIfAborted(options.signal);
    if (!Array.isArray(inputs)) throw new InvalidArgumentError('execute: expected one argument list per device');
    if (inputs.length !== this.replicas) {
      throw new InvalidArgumentError(`execute: expected ${this.replicas} argument list(s), one per device, got ${inputs.length}`);
    }
    for (const [d, args] of inputs.entries()) {
      if (!Array.isArray(args)) throw new InvalidArgumentError(`execute: inputs[${d}] must be an array of tensors`);
      if (args.length !== this.parameters.length) {
        throw new InvalidArgumentError(`execute: @main takes ${this.parameters.length} argument(s), inputs[${d}] has ${args.length}`);
      }
      for (const [k, t] of args.entries()) {
        checkTensor(t, `execute: inputs[${d}][${k}]`);
        const want = this.parameters[k]!;
        if (t.dtype !== want.dtype || t.shape.length !== want.shape.length || t.shape.some((x, i) => x !== want.shape[i])) {
          throw new InvalidArgumentError(
            `execute: inputs[${d}] argument ${k}: expected ${want.dtype}[${want.shape.join(',')}], got ${t.dtype}[${t.shape.join(',')}]`,
          );
        }
      }
    }
    const out = await raceAbort(call(exe.execute(inputs)), options.signal);
    return out as unknown as Tensor[][];
  }

  /** Releases the compiled program. Idempotent; runs in flight finish first. */
  dispose(): void {
    if (!this.#native) return;
    this.#native.dispose();
    this.#native = undefined;
    this.#onDispose(this);
  }

  /** Same as {@link dispose}, for `using exe = await rt.compile(...)`. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * A PJRT client over one plugin: devices, compilation, execution.
 *
 * @example
 * ```ts
 * import { Runtime, tensor } from 'cascade-xla';
 * await using rt = await Runtime.open({ plugin: 'cpu', devices: 4 });
 * console.log(rt.platform, rt.devices.length);
 * const exe = await rt.compile(`func.func @main(%x: tensor<2xf32>) -> tensor<2xf32> {
 *   %y = stablehlo.add %x, %x : tensor<2xf32>
 *   return %y : tensor<2xf32>
 * }`);
 * const [[y]] = await exe.execute([[tensor('f32', [2], [1, 2])]]);
 * ```
 */
export class Runtime {
  /** Platform name reported by the plugin, e.g. `"cpu"`, `"cuda"`. */
  readonly platform: string;
  /** Platform version reported by the plugin. */
  readonly platformVersion: string;
  /** The plugin file in use. */
  readonly pluginPath: string;
  /** What kind of plugin it is. */
  readonly pluginKind: PluginKind;
  /** PJRT C API version the plugin implements. */
  readonly apiVersion: { major: number; minor: number };
  /** PJRT C API version cascade-xla was compiled against. */
  readonly headerApiVersion: { major: number; minor: number };
  /** Plugin attributes (xla_version, stablehlo versions, ...). */
  readonly attributes: Readonly<Record<string, string>>;
  /** PJRT extensions the plugin offers (e.g. `"ffi"`, `"layouts"`). */
  readonly extensions: readonly string[];
  /** The devices this runtime uses. */
  readonly devices: readonly DeviceInfo[];
  #client: NativeClient | undefined;
  readonly #executables = new Set<Executable>();

  private constructor(client: NativeClient, kind: PluginKind, deviceLimit: number | undefined) {
    const info = callSync(() => client.info());
    this.platform = info.platform;
    this.platformVersion = info.platformVersion;
    this.pluginPath = info.pluginPath;
    this.pluginKind = kind;
    this.apiVersion = info.apiVersion;
    this.headerApiVersion = info.headerApiVersion;
    this.attributes = info.attributes;
    this.extensions = info.extensions;
    const devices = info.devices.map((d) => ({
      index: d.index,
      id: d.id,
      kind: d.kind,
      description: d.description,
      memories: d.memories,
    }));
    this.devices = deviceLimit === undefined ? devices : devices.slice(0, deviceLimit);
    this.#client = client;
  }

  /** Opens a PJRT client. Resolves (and on first use downloads) the plugin. */
  static async open(options: RuntimeOptions = {}): Promise<Runtime> {
    const { devices, signal } = options;
    if (devices !== undefined && (!Number.isInteger(devices) || devices < 1 || devices > 1024)) {
      throw new InvalidArgumentError(`devices must be an integer in 1..1024, got ${String(devices)}`);
    }
    if (options.plugin !== undefined && (typeof options.plugin !== 'string' || options.plugin === '')) {
      throw new InvalidArgumentError(`plugin must be 'cpu', 'cuda', 'tpu' or a path, got ${String(options.plugin)}`);
    }
    const resolved = await resolvePlugin(options.plugin ?? 'cpu', {
      download: options.download,
      onProgress: options.onProgress,
      signal,
    });
    throwIfAborted(signal);
    const cpu = resolved.kind === 'cpu';
    const opening = call(native().openClient(resolved.path, cpu && devices !== undefined ? { cpuDeviceCount: devices } : {}));
    let client: NativeClient;
    try {
      client = await raceAbort(opening, signal);
    } catch (error) {
      // Aborted: a client that still opens is closed, not left to the garbage collector.
      if (signal?.aborted) opening.then((late) => late.close(), () => {});
      throw error;
    }
    const available = callSync(() => client.info()).devices.length;
    if (devices !== undefined && devices > available) {
      client.close();
      throw new InvalidArgumentError(`devices: ${devices} requested but the ${resolved.kind} plugin has ${available}`);
    }
    return new Runtime(client, resolved.kind, cpu ? undefined : devices);
  }

  /** @internal The native client, for models loaded on this runtime. */
  nativeClient(): NativeClient {
    return this.#live('load');
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#client === undefined;
  }

  #live(what: string): NativeClient {
    if (!this.#client) throw new DisposedError(`${what}: the runtime has been closed`);
    return this.#client;
  }

  /**
   * Compiles StableHLO text (a module whose entry is `func.func @main` with static shapes) for
   * `replicas` devices. Compiler errors come back as {@link PjrtError} with XLA's message.
   */
  async compile(stablehlo: string, options: CompileOptions = {}): Promise<Executable> {
    const client = this.#live('compile');
    const replicas = options.replicas ?? 1;
    if (typeof stablehlo !== 'string') throw new InvalidArgumentError('compile: the program must be StableHLO text');
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > this.devices.length) {
      throw new InvalidArgumentError(`compile: replicas must be an integer in 1..${this.devices.length}, got ${String(replicas)}`);
    }
    throwIfAborted(options.signal);
    const compiling = call(client.compile(stablehlo, replicas));
    let exe: NativeExecutable;
    try {
      exe = await raceAbort(compiling, options.signal);
    } catch (error) {
      if (options.signal?.aborted) compiling.then((late) => late.dispose(), () => {});
      throw error;
    }
    if (!this.#client) {
      exe.dispose();
      throw new DisposedError('compile: the runtime was closed while compiling');
    }
    const wrapped = new Executable(exe, (e) => this.#executables.delete(e));
    this.#executables.add(wrapped);
    return wrapped;
  }

  /** Memory use of a device's default memory, when the plugin reports it (not on XLA CPU). */
  memoryStats(deviceIndex = 0): { bytesInUse: number; peakBytesInUse?: number; bytesLimit?: number } | null {
    const client = this.#live('memoryStats');
    if (!Number.isInteger(deviceIndex) || deviceIndex < 0 || deviceIndex >= this.devices.length) {
      throw new InvalidArgumentError(`memoryStats: no device ${deviceIndex}`);
    }
    return callSync(() => client.memoryStats(deviceIndex));
  }

  /**
   * Disposes every executable, then the client. Idempotent. Work in flight finishes first in
   * the background; later calls throw {@link DisposedError}.
   */
  async close(): Promise<void> {
    const client = this.#client;
    if (!client) return;
    for (const exe of [...this.#executables]) exe.dispose();
    this.#client = undefined;
    client.close();
  }

  /** Same as {@link close}, for `await using rt = await Runtime.open()`. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
