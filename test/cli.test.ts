// The CLI as a user runs it (compiled dist/, real plugin).
import { execFile } from 'node:child_process';
import { mkdtempSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const cli = path.resolve(import.meta.dirname, '..', 'dist', 'cli', 'main.js');

describe('cascade-xla CLI', () => {
  it('selftest runs a softmax on every device', async () => {
    const { stdout } = await run(process.execPath, [cli, 'selftest', '--devices', '2']);
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

  it('run --json answers a question with the default model', async () => {
    const { stdout } = await run(process.execPath, [cli, 'run', '--json', '--max-tokens', '12', '--max-context', '128', 'What is the capital of France?'], {
      timeout: 600_000,
      maxBuffer: 1 << 24,
    });
    const out = JSON.parse(stdout);
    expect(out.text).toMatch(/Paris/);
    expect(out.stats.generatedTokens).toBeGreaterThan(0);
    expect(out.stats.tau).toBeGreaterThanOrEqual(1);
    expect(out.info.target.layers).toBe(30);
  }, 600_000);

  it('distill writes a tiny model and reports gamma0; run --mode cascade uses it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cascade-distill-'));
    const out = path.join(dir, 'tiny.safetensors');
    const { stdout } = await run(process.execPath, [cli, 'distill', '--json', '--draft-layers', '4', '--positions', '60', '--hidden', '32', '--out', out], {
      timeout: 600_000,
      maxBuffer: 1 << 24,
    });
    const report = JSON.parse(stdout);
    expect(report.path).toBe(out);
    expect(report.trainPositions + report.heldoutPositions).toBe(60);
    expect(report.gamma0.map((g: [number, number]) => g[0])).toEqual([8, 64, 256]);
    for (const [, g] of report.gamma0) expect(g).toBeGreaterThanOrEqual(0);
    expect(statSync(out).size).toBeGreaterThan(32 * 49152 * 4);
    const answer = await run(
      process.execPath,
      [cli, 'run', '--json', '--mode', 'cascade', '--draft-layers', '4', '--tiny', out, '--max-tokens', '8', '--max-context', '128', 'What is the capital of France?'],
      { timeout: 600_000, maxBuffer: 1 << 24 },
    );
    const r = JSON.parse(answer.stdout);
    expect(r.text).toMatch(/Paris/);
    expect(r.stats.rounds.cascade).toBeGreaterThan(0);
    expect(r.stats.gamma0).not.toBeNull();
  }, 900_000);

  it('bad flags fail with a message and a non-zero exit', async () => {
    const error = await run(process.execPath, [cli, 'selftest', '--devices', 'zero']).catch((e: { code: number; stderr: string }) => e);
    expect((error as { code: number }).code).not.toBe(0);
    expect((error as { stderr: string }).stderr).toMatch(/--devices must be a positive integer/);
  });
});
