/** Options shared by several commands. @internal @module */
import { Option } from 'commander';

export const pluginOption = () =>
  new Option('--plugin <plugin>', "PJRT plugin: 'cpu', 'cuda', 'tpu' or a path to a plugin .so (CASCADE_PJRT_PLUGIN overrides 'cpu')").default('cpu');

export const devicesOption = () =>
  new Option('--devices <n>', 'number of devices (CPU plugin: how many CPU devices to create)').argParser(positiveInteger('--devices'));

export function positiveInteger(flag: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${v}'`);
    return n;
  };
}
