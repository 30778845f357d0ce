/** Options shared by several commands. @internal @module */
import { type Command, Option } from 'commander';

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

/**
 * The options that say which models to load and how (run, demo, chat, serve): --model, --draft,
 * --tiny, --devices, --draft-layers, --target-precision, --draft-precision, --plugin.
 */
export function addModelOptions(cmd: Command): Command {
  return cmd
    .option('--model <model>', 'target model: a GGUF file, a Hugging Face folder, an http(s) URL of a GGUF file or a catalogue name (default: SmolLM2-135M-Instruct, downloaded once)')
    .option('--draft <model>', "draft model with the same vocabulary, given like --model (default: the target's first layers)")
    .option('--tiny <path>', "tiny model for --mode cascade: a .safetensors file, or 'fit' to fit one from the draft (cached)")
    .option('--devices <n>', 'devices the target is replicated on; branches are split across them', positiveInteger('--devices'), 1)
    .option('--draft-layers <n>', 'layers of the self-speculative draft', positiveInteger('--draft-layers'))
    .addOption(new Option('--target-precision <p>', 'target weights on the device').choices(['f32', 'bf16', 'int8']))
    .addOption(new Option('--draft-precision <p>', 'draft weights on the device').choices(['f32', 'bf16', 'int8']))
    .addOption(pluginOption());
}
