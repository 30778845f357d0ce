/**
 * The files a load reads and remembers next to a model: its tokenizer, the cached fitted tiny, the
 * remembered draft-depth choice (written atomically, with a checksum).
 * @internal
 * @module
 */
import { createHash } from 'node:crypto';
import { access, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';

import { InvalidArgumentError } from '../errors.js';
import { Tokenizer } from '../tokenizer/index.js';
import { cachePath } from '../utils/cache.js';
import type { Precision } from './types.js';

/**
 * Where a fitted tiny for this target/draft is cached. `-w2q4`: fitted for W2 in 4-bit blocks (the
 * closed form's b2 cancels that rounding exactly; files fitted for int8 W2 still load, with b2
 * corrected approximately, cpp/model/tiny.h RoundTinyAsProgramHolds).
 */
export async function tinyCachePath(target: string, draft: string | undefined, draftLayers: number | undefined, precision: string): Promise<string> {
  const source = draft ?? target;
  const st = await stat(source).catch(() => undefined);
  const name = `${path.basename(source).replace(/[^A-Za-z0-9._-]/g, '_')}-${st?.size ?? 0}-${draft ? 'draft' : `L${draftLayers ?? 'auto'}`}-${precision}-w2q4.safetensors`;
  const dir = cachePath('tiny');
  await mkdir(dir, { recursive: true });
  return path.join(dir, name);
}

/** The sha256 a remembered draft choice carries over its content (a file of other bytes is measured again). */
export function choiceChecksum(layers: unknown, candidates: unknown): string {
  return createHash('sha256').update(JSON.stringify({ layers, candidates })).digest('hex');
}

/** The draft depth a load measured and remembered in `choiceFile` (undefined: none, or a file that does not check out). */
export async function rememberedDraftLayers(choiceFile: string): Promise<number | undefined> {
  return readFile(choiceFile, 'utf8')
    .then((t) => {
      const { layers, candidates, checksum } = JSON.parse(t) as { layers?: unknown; candidates?: unknown; checksum?: unknown };
      if (checksum !== choiceChecksum(layers, candidates)) return undefined;
      return typeof layers === 'number' && Number.isInteger(layers) && layers > 0 ? layers : undefined;
    })
    .catch(() => undefined);
}

/** Writes `text` to a temporary next to `file` (named for this process) and renames it into place. */
export async function writeFileAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp${process.pid}`;
  try {
    await writeFile(tmp, text);
    await rename(tmp, file);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Where the measured draft-depth choice for a target file is remembered. */
export async function draftChoicePath(target: string, targetPrecision: Precision, draftPrecision: Precision, targetStorage?: 'auto' | 'dense'): Promise<string> {
  const st = await stat(target).catch(() => undefined);
  const dir = cachePath('draft-choice');
  await mkdir(dir, { recursive: true });
  const name = `${path.basename(target).replace(/[^A-Za-z0-9._-]/g, '_')}-${st?.size ?? 0}-${Math.floor(st?.mtimeMs ?? 0)}`;
  // A dense target reads other bytes a step than its 4-bit blocks: a choice of its own.
  const storage = targetStorage === 'dense' ? '-dense' : '';
  return path.join(dir, `${name}-${targetPrecision}${storage}-${draftPrecision}.json`);
}

export async function findTokenizer(target: string): Promise<Tokenizer> {
  if (target.toLowerCase().endsWith('.gguf')) return Tokenizer.fromGguf(target);
  const dir = target.endsWith('.json') || target.endsWith('.safetensors') ? path.dirname(target) : target;
  const file = path.join(dir, 'tokenizer.json');
  try {
    await access(file);
  } catch {
    throw new InvalidArgumentError(`no tokenizer for ${target}: expected a .gguf file or ${file}`);
  }
  return Tokenizer.fromTokenizerJson(file);
}
