import { Command } from 'commander';

import { Runtime } from '../../runtime/runtime.js';
import { tensor, toNumbers } from '../../runtime/tensor.js';
import { devicesOption, pluginOption } from '../options.js';

// softmax(x @ w) per device: a matmul, a max-reduce, exp and a sum-reduce, replicated pmap style.
const PROGRAM = `
func.func public @main(%x: tensor<1x8xf32>, %w: tensor<8x8xf32>) -> tensor<1x8xf32> {
  %l = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<1x8xf32>, tensor<8x8xf32>) -> tensor<1x8xf32>
  %ninf = stablehlo.constant dense<0xFF800000> : tensor<f32>
  %m = stablehlo.reduce(%l init: %ninf) applies stablehlo.maximum across dimensions = [1] : (tensor<1x8xf32>, tensor<f32>) -> tensor<1xf32>
  %mb = stablehlo.broadcast_in_dim %m, dims = [0] : (tensor<1xf32>) -> tensor<1x8xf32>
  %d = stablehlo.subtract %l, %mb : tensor<1x8xf32>
  %e = stablehlo.exponential %d : tensor<1x8xf32>
  %zero = stablehlo.constant dense<0.0> : tensor<f32>
  %s = stablehlo.reduce(%e init: %zero) applies stablehlo.add across dimensions = [1] : (tensor<1x8xf32>, tensor<f32>) -> tensor<1xf32>
  %sb = stablehlo.broadcast_in_dim %s, dims = [0] : (tensor<1xf32>) -> tensor<1x8xf32>
  %p = stablehlo.divide %e, %sb : tensor<1x8xf32>
  return %p : tensor<1x8xf32>
}`;

export function selftestCommand(): Command {
  return new Command('selftest')
    .description(
      'Check a PJRT plugin: open the runtime, print the platform, plugin and devices, and run a small softmax(x @ w) ' +
        'program on every device with different inputs.',
    )
    .addOption(pluginOption())
    .addOption(devicesOption().default(4))
    .action(async (opts: { plugin: string; devices: number }) => {
      const t0 = performance.now();
      await using rt = await Runtime.open({ plugin: opts.plugin, devices: opts.devices, onProgress: (m) => process.stderr.write(`${m}\n`) });
      const t1 = performance.now();
      console.log(`platform   ${rt.platform} ${rt.platformVersion}`);
      console.log(`plugin     ${rt.pluginPath}`);
      console.log(`PJRT API   ${rt.apiVersion.major}.${rt.apiVersion.minor} (compiled against ${rt.headerApiVersion.major}.${rt.headerApiVersion.minor})`);
      console.log(`devices    ${rt.devices.map((d) => `${d.index}:${d.kind}[${d.memories.map((m) => m.kind).join('|')}]`).join('  ')}`);
      const exe = await rt.compile(PROGRAM, { replicas: rt.devices.length });
      const t2 = performance.now();
      const w = tensor('f32', [8, 8], Array.from({ length: 64 }, (_, i) => ((i * 7) % 11) / 10 - 0.5));
      const inputs = rt.devices.map((d) => [tensor('f32', [1, 8], Array.from({ length: 8 }, (_, i) => (i === d.index % 8 ? 3 : 0.1 * i))), w]);
      const out = await exe.execute(inputs);
      const t3 = performance.now();
      for (const [d, [p]] of out.entries()) {
        const probs = toNumbers(p!);
        const sum = probs.reduce((a, b) => a + b, 0);
        console.log(`device ${d}  softmax = [${probs.map((v) => v.toFixed(3)).join(' ')}]  sum ${sum.toFixed(4)}`);
      }
      console.log(`open ${(t1 - t0).toFixed(0)} ms, compile ${(t2 - t1).toFixed(0)} ms, execute ${(t3 - t2).toFixed(1)} ms`);
    });
}
