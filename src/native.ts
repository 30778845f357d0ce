/**
 * Loads the N-API addon (a prebuild from `prebuilds/` or the local `build/Release`) and turns the
 * plain errors it rejects with into the typed classes of `errors.ts`.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  CascadeError,
  DisposedError,
  InvalidArgumentError,
  ModelFormatError,
  PjrtError,
  PluginIncompatibleError,
  PluginNotFoundError,
} from './errors.js';

/** Root of the installed package (the folder holding package.json). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** @internal A tensor as the addon reads and writes it. */
export interface NativeTensor {
  dtype: string;
  shape: number[];
  data: ArrayBufferView;
}

/** @internal */
export interface NativeTensorType {
  dtype: string;
  shape: number[];
}

/** @internal */
export interface NativeExecutable {
  execute(perDevice: NativeTensor[][]): Promise<NativeTensor[][]>;
  signature(): { parameters: NativeTensorType[]; results: NativeTensorType[]; deviceIndices: number[]; replicas: number };
  dispose(): void;
}

/** @internal */
export interface NativeClientInfo {
  pluginPath: string;
  apiVersion: { major: number; minor: number };
  headerApiVersion: { major: number; minor: number };
  platform: string;
  platformVersion: string;
  attributes: Record<string, string>;
  extensions: string[];
  devices: Array<{
    index: number;
    id: number;
    kind: string;
    localHardwareId: number;
    description: string;
    memories: Array<{ id: number; kind: string; isDefault: boolean }>;
  }>;
}

/** @internal */
export interface NativeClient {
  info(): NativeClientInfo;
  compile(text: string, replicas: number): Promise<NativeExecutable>;
  memoryStats(deviceIndex: number): { bytesInUse: number; peakBytesInUse?: number; bytesLimit?: number } | null;
  close(): void;
}

/** @internal */
export interface NativeAddon {
  openClient(pluginPath: string, options: { cpuDeviceCount?: number }): Promise<NativeClient>;
  pjrtHeaderVersion: string;
}

let addon: NativeAddon | undefined;

/** @internal Loads the addon once. */
export function native(): NativeAddon {
  if (addon) return addon;
  const require = createRequire(import.meta.url);
  const load = require('node-gyp-build') as (dir: string) => NativeAddon;
  try {
    addon = load(packageRoot);
  } catch (cause) {
    throw new CascadeError(
      `cascade-xla's native addon could not be loaded from ${packageRoot} (no prebuild for ` +
        `${process.platform}-${process.arch} and no build/Release/cascade_xla.node). ` +
        'Run `npm rebuild cascade-xla` (needs cmake and a C++17 compiler).',
      { cause },
    );
  }
  return addon;
}

/** @internal Maps an error rejected by the addon to its typed class. */
export function typedError(error: unknown): Error {
  if (!(error instanceof Error)) return new CascadeError(String(error));
  if (error instanceof CascadeError) return error;
  const kind = (error as { kind?: string }).kind;
  const options = { cause: error };
  switch (kind) {
    case 'PjrtError':
      return new PjrtError(error.message, (error as { pjrtCode?: number }).pjrtCode ?? 2, options);
    case 'PluginNotFoundError':
      return new PluginNotFoundError(error.message, options);
    case 'PluginIncompatibleError':
      return new PluginIncompatibleError(error.message, options);
    case 'InvalidArgumentError':
      return new InvalidArgumentError(error.message, options);
    case 'DisposedError':
      return new DisposedError(error.message, options);
    case 'ModelFormatError':
      return new ModelFormatError(error.message, options);
    default:
      return new CascadeError(error.message, options);
  }
}

/** @internal Awaits a native promise, rethrowing typed errors. */
export async function call<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw typedError(error);
  }
}

/** @internal Runs a synchronous native call, rethrowing typed errors. */
export function callSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    throw typedError(error);
  }
}
