/**
 * Where the models live: per model, the device, its memory kind, the bytes, and the share of the
 * memory's capacity; and the tiny model's bytes against the CPU's caches (docs/how-the-cascade-works.md, "Placement").
 * @module
 */
import { readFile, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** One model's placement. */
export interface ModelPlacement {
  model: 'target' | 'draft' | 'tiny';
  /** Index into {@link Runtime.devices}. */
  device: number;
  /** The PJRT memory kind holding it (the device's default memory, e.g. "device"). */
  memoryKind: string;
  /** Weights plus, for target and draft, their KV cache. */
  bytes: number;
  /** Capacity of that memory when known (CPU plugin: the host's RAM), else null. */
  capacityBytes: number | null;
  /** bytes / capacityBytes, or null. */
  share: number | null;
  /**
   * Of its weights, the bytes in 2 MiB pages (CPU plugin: the upload collapses them, which makes a
   * step's reads 5-16% faster; 0 on other plugins, where the OS declines, or with
   * `CASCADE_NO_HUGE_PAGES` set).
   */
  hugePageBytes: number;
}

/** A CPU cache level from sysfs. */
export interface CpuCache {
  level: number;
  type: string;
  bytes: number;
}

/** The placement report of a {@link Cascade}. */
export interface PlacementReport {
  models: ModelPlacement[];
  /** CPU caches of cpu0 (Linux sysfs); empty elsewhere. */
  cpuCaches: CpuCache[];
  /** The tiny model's bytes against the largest CPU cache ("fits" when smaller), null without a tiny. */
  tinyVersusCache: { tinyBytes: number; cacheBytes: number; fits: boolean } | null;
  /** What a PJRT memory kind can and cannot express. */
  note: string;
}

function parseSize(text: string): number {
  const m = /^(\d+)\s*([KMG]?)/i.exec(text.trim());
  if (!m) return 0;
  const unit = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * unit;
}

/** The caches of cpu0 from /sys/devices/system/cpu/cpu0/cache (Linux). */
export async function cpuCaches(): Promise<CpuCache[]> {
  const dir = '/sys/devices/system/cpu/cpu0/cache';
  const entries = await readdir(dir).catch(() => [] as string[]);
  const out: CpuCache[] = [];
  for (const e of entries.filter((x) => x.startsWith('index'))) {
    const read = (f: string) => readFile(path.join(dir, e, f), 'utf8').then((t) => t.trim(), () => '');
    const [level, type, size] = await Promise.all([read('level'), read('type'), read('size')]);
    if (level && size) out.push({ level: Number(level), type, bytes: parseSize(size) });
  }
  return out.sort((a, b) => a.level - b.level);
}

export const PLACEMENT_NOTE =
  'PJRT exposes memories per device by kind ("device", "pinned_host", "unpinned_host"); the weights ' +
  'live in the default one. No PJRT memory kind reaches TPU VMEM or GPU shared memory (those exist only ' +
  'inside kernels), so "the tiny in on-chip memory" here means: fused into the draft step and small ' +
  'enough to stay cache-resident, reported against the CPU caches.';

/** @internal Builds the report from the loaded models' sizes and the runtime's devices. */
export async function placementReport(
  memory: Record<
    'target' | 'draft',
    { weightBytes: number; kvCacheBytes: number; tinyBytes: number; hugePageBytes?: number; tinyHugePageBytes?: number }
  >,
  devices: readonly { index: number; kind: string; memories: readonly { kind: string; isDefault: boolean }[] }[],
  platform: string,
  memoryStats: (device: number) => { bytesLimit?: number } | null,
): Promise<PlacementReport> {
  const device = devices[0]!;
  const kind = device.memories.find((m) => m.isDefault)?.kind ?? 'device';
  const limit = memoryStats(device.index)?.bytesLimit ?? (platform === 'cpu' ? os.totalmem() : undefined);
  const entry = (model: ModelPlacement['model'], bytes: number, hugePageBytes: number): ModelPlacement => ({
    model,
    device: device.index,
    memoryKind: kind,
    bytes,
    capacityBytes: limit ?? null,
    share: limit ? bytes / limit : null,
    hugePageBytes,
  });
  const models = [
    entry('target', memory.target.weightBytes + memory.target.kvCacheBytes, memory.target.hugePageBytes ?? 0),
    entry('draft', memory.draft.weightBytes + memory.draft.kvCacheBytes, memory.draft.hugePageBytes ?? 0),
  ];
  if (memory.draft.tinyBytes > 0) models.push(entry('tiny', memory.draft.tinyBytes, memory.draft.tinyHugePageBytes ?? 0));
  const caches = platform === 'cpu' ? await cpuCaches() : [];
  const largest = caches.reduce((m, c) => Math.max(m, c.bytes), 0);
  return {
    models,
    cpuCaches: caches,
    tinyVersusCache:
      memory.draft.tinyBytes > 0 && largest > 0
        ? { tinyBytes: memory.draft.tinyBytes, cacheBytes: largest, fits: memory.draft.tinyBytes <= largest }
        : null,
    note: PLACEMENT_NOTE,
  };
}
