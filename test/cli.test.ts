// The CLI as a user runs it (compiled dist/, real plugin).
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const cli = path.resolve(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

describe('cascade-xla CLI', () => {
  it('demo runs a softmax on every device', async () => {
    const { stdout } = await run(process.execPath, [cli, 'demo', '--devices', '2']);
    expect(stdout).toMatch(/^platform\s+cpu/m);
    const sums = [...stdout.matchAll(/device (\d)\s+softmax = \[([^\]]+)\]\s+sum ([\d.]+)/g)];
    expect(sums.map((m) => m[1])).toEqual(['0', '1']);
    for (const m of sums) expect(Number(m[3])).toBeCloseTo(1, 3);
    expect(sums[0]![2]).not.toEqual(sums[1]![2]); // different inputs per device
  });

  it('info --json lists devices and memories', async () => {
    const { stdout } = await run(process.execPath, [cli, 'info', '--devices', '3', '--json']);
    const info = JSON.parse(stdout);
    expect(info.platform).toBe('cpu');
    expect(info.devices).toHaveLength(3);
    expect(info.devices[0].memories.map((m: { kind: string }) => m.kind)).toContain('device');
    expect(info.plugin.apiVersion.major).toBe(0);
  });

  it('bad flags fail with a message and a non-zero exit', async () => {
    const error = await run(process.execPath, [cli, 'demo', '--devices', 'zero']).catch((e: { code: number; stderr: string }) => e);
    expect((error as { code: number }).code).not.toBe(0);
    expect((error as { stderr: string }).stderr).toMatch(/--devices must be a positive integer/);
  });
});
