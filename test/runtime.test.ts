// The Runtime API against the real XLA CPU plugin (no mock): devices, compile, execute on every
// device, dtypes, typed errors, lifecycle, and the event loop staying free.
import { writeFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  DisposedError,
  InvalidArgumentError,
  PjrtError,
  PluginIncompatibleError,
  PluginNotFoundError,
  Runtime,
  bf16FromNumber,
  tensor,
  toNumbers,
} from '../src/index.js';

// y = x @ w + b (broadcast), s = sum(y), n = count of y > 0 computed with integer ops.
const AFFINE = `
func.func public @main(%x: tensor<2x3xf32>, %w: tensor<3x4xf32>, %b: tensor<4xf32>, %k: tensor<4xi32>)
    -> (tensor<2x4xf32>, tensor<f32>, tensor<4xi32>) {
  %y = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<2x3xf32>, tensor<3x4xf32>) -> tensor<2x4xf32>
  %bb = stablehlo.broadcast_in_dim %b, dims = [1] : (tensor<4xf32>) -> tensor<2x4xf32>
  %z = stablehlo.add %y, %bb : tensor<2x4xf32>
  %zero = stablehlo.constant dense<0.0> : tensor<f32>
  %s = stablehlo.reduce(%z init: %zero) applies stablehlo.add across dimensions = [0, 1] : (tensor<2x4xf32>, tensor<f32>) -> tensor<f32>
  %three = stablehlo.constant dense<3> : tensor<4xi32>
  %m = stablehlo.multiply %k, %three : tensor<4xi32>
  %r = stablehlo.remainder %m, %three : tensor<4xi32>
  %i = stablehlo.iota dim = 0 : tensor<4xi32>
  %o = stablehlo.add %m, %i : tensor<4xi32>
  %o2 = stablehlo.add %o, %r : tensor<4xi32>
  return %z, %s, %o2 : tensor<2x4xf32>, tensor<f32>, tensor<4xi32>
}`;

function affineReference(x: number[], w: number[], b: number[], k: number[]) {
  const z: number[] = [];
  for (let r = 0; r < 2; r++)
    for (let c = 0; c < 4; c++) {
      let acc = 0;
      for (let j = 0; j < 3; j++) acc += x[r * 3 + j]! * w[j * 4 + c]!;
      z.push(Math.fround(acc + b[c]!));
    }
  return { z, s: z.reduce((a, v) => a + v, 0), o: k.map((v, i) => v * 3 + i) };
}

const rand = (n: number, seed: number) => {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return Math.fround((s / 2 ** 31) * 4 - 2);
  });
};

describe('Runtime on the XLA CPU plugin', () => {
  let rt: Runtime;
  beforeAll(async () => {
    rt = await Runtime.open({ plugin: 'cpu', devices: 4 });
  });
  afterAll(async () => {
    await rt.close();
  });

  it('opens 4 CPU devices with their memories', () => {
    expect(rt.platform).toBe('cpu');
    expect(rt.apiVersion.major).toBe(0);
    expect(rt.apiVersion.minor).toBeGreaterThanOrEqual(57);
    expect(rt.devices).toHaveLength(4);
    for (const [i, d] of rt.devices.entries()) {
      expect(d.index).toBe(i);
      expect(typeof d.kind).toBe('string');
      expect(d.memories.length).toBeGreaterThan(0);
      expect(d.memories.some((m) => m.isDefault)).toBe(true);
    }
  });

  it('runs one program on every device with different inputs and matches a JS reference', async () => {
    const exe = await rt.compile(AFFINE, { replicas: 4 });
    expect(exe.parameters.map((p) => p.shape)).toEqual([[2, 3], [3, 4], [4], [4]]);
    const inputs = [0, 1, 2, 3].map((d) => ({
      x: rand(6, d + 1),
      w: rand(12, d + 11),
      b: rand(4, d + 21),
      k: [d, -d, 7 * d, 1000 + d],
    }));
    const out = await exe.execute(
      inputs.map(({ x, w, b, k }) => [
        tensor('f32', [2, 3], x),
        tensor('f32', [3, 4], w),
        tensor('f32', [4], b),
        tensor('s32', [4], k),
      ]),
    );
    expect(out).toHaveLength(4);
    for (const [d, { x, w, b, k }] of inputs.entries()) {
      const ref = affineReference(x, w, b, k);
      const [z, s, o] = out[d]!;
      expect(z!.shape).toEqual([2, 4]);
      expect(z!.dtype).toBe('f32');
      toNumbers(z!).forEach((v, i) => expect(v).toBeCloseTo(ref.z[i]!, 5));
      expect(toNumbers(s!)[0]).toBeCloseTo(ref.s, 4);
      expect(toNumbers(o!)).toEqual(ref.o);
    }
    exe.dispose();
    expect(exe.disposed).toBe(true);
  });

  it('round-trips bf16 and s8 and converts f32 to bf16 like round-to-nearest-even', async () => {
    const exe = await rt.compile(`
func.func public @main(%a: tensor<5xbf16>, %b: tensor<6xi8>, %c: tensor<5xf32>) -> (tensor<5xbf16>, tensor<6xi8>, tensor<5xbf16>) {
  %two = stablehlo.constant dense<2> : tensor<6xi8>
  %m = stablehlo.multiply %b, %two : tensor<6xi8>
  %cb = stablehlo.convert %c : (tensor<5xf32>) -> tensor<5xbf16>
  return %a, %m, %cb : tensor<5xbf16>, tensor<6xi8>, tensor<5xbf16>
}`);
    const a = tensor('bf16', [5], [1, -2.5, 3.140625, 65280, 1e-3]);
    const b = tensor('s8', [6], [0, 1, -1, 63, 64, -128]);
    const c = [1.00390625, 1.01171875, -7.3, 3.3e38, 1e-40];
    const [[ra, rb, rc]] = (await exe.execute([[a, b, tensor('f32', [5], c)]])) as [[any, any, any]];
    expect(ra.dtype).toBe('bf16');
    expect(Array.from(ra.data)).toEqual(Array.from(a.data));
    expect(rb.dtype).toBe('s8');
    expect(Array.from(rb.data as Int8Array)).toEqual([0, 2, -2, 126, -128, 0]); // wraps like two's complement
    expect(Array.from(rc.data as Uint16Array)).toEqual(c.map((v) => bf16FromNumber(v)));
  });

  it('returns the compiler message as a PjrtError and keeps working', async () => {
    const bad = 'func.func public @main(%x: tensor<2xf32>) -> tensor<2xf32> {\n  %y = stablehlo.frobnicate %x : tensor<2xf32>\n  return %y : tensor<2xf32>\n}';
    const error = await rt.compile(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PjrtError);
    expect((error as PjrtError).message).toMatch(/frobnicate/);
    expect(typeof (error as PjrtError).code).toBe('number');
    const ok = await rt.compile('func.func public @main(%x: tensor<2xf32>) -> tensor<2xf32> {\n return %x : tensor<2xf32>\n}');
    const [[y]] = (await ok.execute([[tensor('f32', [2], [4, 5])]])) as [[any]];
    expect(toNumbers(y)).toEqual([4, 5]);
  });

  it('rejects wrong argument count, shape, dtype and device count before the plugin', async () => {
    const exe = await rt.compile(AFFINE, { replicas: 2 });
    const good = () => [tensor('f32', [2, 3], rand(6, 1)), tensor('f32', [3, 4], rand(12, 2)), tensor('f32', [4], rand(4, 3)), tensor('s32', [4], [1, 2, 3, 4])];
    await expect(exe.execute([good(), good()])).resolves.toHaveLength(2);
    await expect(exe.execute([good()])).rejects.toThrow(InvalidArgumentError); // one list for two devices
    await expect(exe.execute([good().slice(0, 3), good()])).rejects.toThrow(/takes 4 argument/);
    const wrongShape = good();
    wrongShape[2] = tensor('f32', [5], rand(5, 4));
    await expect(exe.execute([wrongShape, good()])).rejects.toThrow(/argument 2: expected f32\[4\], got f32\[5\]/);
    const wrongDtype = good();
    wrongDtype[3] = tensor('f32', [4], [1, 2, 3, 4]);
    await expect(exe.execute([good(), wrongDtype])).rejects.toThrow(InvalidArgumentError);
    const lying = good();
    lying[0] = { dtype: 'f32', shape: [2, 3], data: new Float32Array(5) };
    await expect(exe.execute([lying, good()])).rejects.toThrow(/has 6 elements but data has 5/);
    const wrongArray = good();
    wrongArray[0] = { dtype: 'f32', shape: [2, 3], data: new Int32Array(6) } as any;
    await expect(exe.execute([wrongArray, good()])).rejects.toThrow(/needs a Float32Array/);
    await expect(rt.compile(AFFINE, { replicas: 5 })).rejects.toThrow(InvalidArgumentError);
    await expect(rt.compile('')).rejects.toThrow(InvalidArgumentError);
  });

  it('keeps the event loop turning during a long compile and execute', async () => {
    // A chain of 400 dependent matmuls on 256x256: slow enough to notice a blocked loop.
    const lines = ['func.func public @main(%x: tensor<256x256xf32>) -> tensor<256x256xf32> {'];
    let prev = '%x';
    for (let i = 0; i < 400; i++) {
      lines.push(`  %m${i} = stablehlo.dot_general ${prev}, %x, contracting_dims = [1] x [0] : (tensor<256x256xf32>, tensor<256x256xf32>) -> tensor<256x256xf32>`);
      lines.push(`  %t${i} = stablehlo.tanh %m${i} : tensor<256x256xf32>`);
      prev = `%t${i}`;
    }
    lines.push(`  return ${prev} : tensor<256x256xf32>`, '}');
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    try {
      const started = performance.now();
      const exe = await rt.compile(lines.join('\n'));
      const compileMs = performance.now() - started;
      const ticksDuringCompile = ticks;
      expect(ticksDuringCompile).toBeGreaterThanOrEqual(Math.min(3, Math.floor(compileMs / 20)));
      ticks = 0;
      const t0 = performance.now();
      await exe.execute([[tensor('f32', [256, 256], new Array(65536).fill(0.001))]]);
      const execMs = performance.now() - t0;
      expect(ticks).toBeGreaterThanOrEqual(Math.min(3, Math.floor(execMs / 20)));
      expect(compileMs + execMs).toBeGreaterThan(50); // the work really took time
    } finally {
      clearInterval(timer);
    }
  });
});

describe('Runtime lifecycle and plugin errors', () => {
  it('throws DisposedError after close, and close is idempotent', async () => {
    const rt = await Runtime.open({ plugin: 'cpu', devices: 1 });
    const exe = await rt.compile('func.func public @main(%x: tensor<f32>) -> tensor<f32> {\n return %x : tensor<f32>\n}');
    await rt.close();
    await rt.close();
    expect(rt.closed).toBe(true);
    expect(exe.disposed).toBe(true);
    await expect(rt.compile('func.func public @main() -> () {\n return\n}')).rejects.toThrow(DisposedError);
    await expect(exe.execute([[tensor('f32', [], [1])]])).rejects.toThrow(DisposedError);
    expect(() => rt.memoryStats(0)).toThrow(DisposedError);
  });

  it('supports await using', async () => {
    let inner: Runtime | undefined;
    {
      await using rt = await Runtime.open({ devices: 1 });
      inner = rt;
      expect(rt.closed).toBe(false);
    }
    expect(inner.closed).toBe(true);
  });

  it('a missing plugin path is PluginNotFoundError', async () => {
    await expect(Runtime.open({ plugin: '/nonexistent/dir/pjrt_plugin.so' })).rejects.toThrow(PluginNotFoundError);
  });

  it('a file that is not a PJRT plugin is PluginIncompatibleError', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cascade-notplugin-'));
    const fake = path.join(dir, 'fake_plugin.so');
    writeFileSync(fake, 'this is not an ELF file');
    await expect(Runtime.open({ plugin: fake })).rejects.toThrow(PluginIncompatibleError);
    // A real shared library without GetPjrtApi.
    await expect(Runtime.open({ plugin: '/lib/x86_64-linux-gnu/libz.so.1' })).rejects.toThrow(/no GetPjrtApi/);
  });

  it('rejects bad options with InvalidArgumentError', async () => {
    await expect(Runtime.open({ devices: 0 })).rejects.toThrow(InvalidArgumentError);
    await expect(Runtime.open({ devices: 1.5 })).rejects.toThrow(InvalidArgumentError);
    await expect(Runtime.open({ plugin: '' })).rejects.toThrow(InvalidArgumentError);
  });

  it('an aborted signal rejects open with AbortError', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(Runtime.open({ signal: controller.signal })).rejects.toThrow(/abort/i);
  });
});
