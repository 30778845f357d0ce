// The CLI as a user runs it (compiled dist/, real plugin).
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
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

  it('distill trains a tiny model (closed form, then Adam on the device) and reports gamma0; run --mode cascade uses it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cascade-distill-'));
    const out = path.join(dir, 'tiny.safetensors');
    const { stdout } = await run(
      process.execPath,
      [cli, 'distill', '--json', '--draft-layers', '4', '--positions', '60', '--hidden', '32', '--steps', '20', '--batch', '16', '--out', out],
      { timeout: 600_000, maxBuffer: 1 << 24 },
    );
    const report = JSON.parse(stdout);
    expect(report.path).toBe(out);
    expect(report.trainPositions + report.heldoutPositions).toBe(60);
    expect(report.gamma0.map((g: [number, number]) => g[0])).toEqual([8, 64, 256]);
    expect(report.closedFormGamma0.map((g: [number, number]) => g[0])).toEqual([8, 64, 256]);
    for (const [, g] of report.gamma0) expect(g).toBeGreaterThanOrEqual(0);
    expect(report.train).toMatchObject({ steps: 20, batch: 16, validationK: 8 });
    expect(report.train.validation[0][0]).toBe(0);
    expect(report.train.validation.at(-1)[0]).toBe(20);
    expect(report.train.validation.map((p: [number, number]) => p[0])).toContain(report.train.bestStep);
    expect(report.train.firstLoss).toBeGreaterThan(0);
    expect(Number.isFinite(report.train.lastLoss)).toBe(true);
    expect(report.ms.train).toBeGreaterThan(0);
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

  it('distill writes to the load cache by default, and the next cascade load reuses it instead of fitting', async () => {
    // A cache of its own (the models and plugins linked from the real one), so the user's stays as it is.
    const real = process.env.CASCADE_CACHE_DIR || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cascade-xla');
    const cache = mkdtempSync(path.join(os.tmpdir(), 'cascade-distill-cache-'));
    for (const sub of ['models', 'plugins']) symlinkSync(path.join(real, sub), path.join(cache, sub));
    const env = { ...process.env, CASCADE_CACHE_DIR: cache };
    const { stdout } = await run(process.execPath, [cli, 'distill', '--json', '--draft-layers', '3', '--positions', '30', '--hidden', '16', '--steps', '3'], {
      timeout: 600_000,
      maxBuffer: 1 << 24,
      env,
    });
    const report = JSON.parse(stdout);
    expect(path.dirname(report.path)).toBe(path.join(cache, 'tiny'));
    expect(path.basename(report.path)).toMatch(/-L3-q4-w2q4\.safetensors$/);
    const written = readFileSync(report.path);
    const answer = await run(
      process.execPath,
      [cli, 'run', '--json', '--mode', 'cascade', '--draft-layers', '3', '--max-tokens', '4', '--max-context', '128', 'Hi'],
      { timeout: 600_000, maxBuffer: 1 << 24, env },
    );
    expect(JSON.parse(answer.stdout).stats.rounds.cascade).toBeGreaterThan(0);
    expect(answer.stderr).not.toMatch(/fitting the tiny model/);
    expect(readFileSync(report.path).equals(written)).toBe(true);  // reused, not fitted again
    rmSync(cache, { recursive: true, force: true });
  }, 900_000);

  it('bad flags fail with a message and a non-zero exit', async () => {
    const error = await run(process.execPath, [cli, 'selftest', '--devices', 'zero']).catch((e: { code: number; stderr: string }) => e);
    expect((error as { code: number }).code).not.toBe(0);
    expect((error as { stderr: string }).stderr).toMatch(/--devices must be a positive integer/);
  });

  it('--version prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(path.resolve(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const { stdout } = await run(process.execPath, [cli, flag]);
      expect(stdout.trim()).toBe(version);
    }
  });

  it('run prints the answer on stdout and one summary line on stderr; --stats adds the tables; --quiet only the answer', async () => {
    const args = ['--max-tokens', '12', '--max-context', '128', '--draft-layers', '4', 'What is the capital of France?'];
    const plain = await run(process.execPath, [cli, 'run', ...args], { timeout: 600_000 });
    expect(plain.stdout).toMatch(/Paris/);
    expect(plain.stdout.trim().split('\n')).toHaveLength(1); // just the text
    const summary = plain.stderr.trim().split('\n').filter((l) => /tokens\/s/.test(l));
    expect(summary).toHaveLength(1);
    expect(summary[0]).toMatch(/^\d+ prompt tokens, \d+ tokens, [\d.]+ tokens\/s, mode speculative, [\d.]+ tokens per target call, load [\d.]+ s$/);
    expect(plain.stderr).not.toMatch(/tau|gamma|placement/);

    const stats = await run(process.execPath, [cli, 'run', '--stats', ...args], { timeout: 600_000 });
    expect(stats.stdout).toMatch(/Paris/);
    expect(stats.stdout).toMatch(/^stage\s+ms\s+share/m);
    expect(stats.stdout).toMatch(/tau \(tokens per target call\)/);

    const quiet = await run(process.execPath, [cli, '--quiet', 'run', ...args], { timeout: 600_000 });
    expect(quiet.stdout.trim()).toBe(plain.stdout.trim()); // greedy: the same answer
    expect(quiet.stderr).not.toMatch(/tokens\/s|loading|XLA programs/);
  }, 900_000);

  it("README.md's first js example runs as written (an ESM file importing 'cascade-xla' from node_modules)", async () => {
    const readme = readFileSync(path.resolve(import.meta.dirname, '..', 'README.md'), 'utf8');
    const block = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(block).toBeDefined();
    expect(block).not.toMatch(/await using/); // Node 20 has no `await using`
    // A user's project: package 'cascade-xla' in node_modules (this checkout, built), the example as hello.mjs.
    const project = mkdtempSync(path.join(os.tmpdir(), 'cascade-readme-'));
    try {
      mkdirSync(path.join(project, 'node_modules'));
      symlinkSync(path.resolve(import.meta.dirname, '..'), path.join(project, 'node_modules', 'cascade-xla'));
      writeFileSync(path.join(project, 'hello.mjs'), block!);
      const { stdout } = await run(process.execPath, ['hello.mjs'], { cwd: project, timeout: 600_000 });
      const lines = stdout.trim().split('\n');
      expect(lines.at(-1)).toMatch(/^\d+ tokens at [\d.]+ tokens\/s$/);
      expect(lines.slice(0, -1).join('\n')).toMatch(/\w{3,}/); // some answer text
    } finally {
      rmSync(project, { recursive: true, force: true });
    }
  }, 600_000);
});
