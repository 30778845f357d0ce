/**
 * The PJRT plugin wheels cascade-xla knows how to fetch from PyPI, and where each one lives in the
 * cache. The cache layout `<root>/plugins/<package>-<version>/<file>` is shared with the native
 * plugin locator (`cpp/pjrt/plugin_locator.cc`): do not change it for 'cpu'.
 * @module
 */

import { join } from 'node:path';

import { cachePath } from '../utils/cache.js';

/** A PJRT plugin shipped inside a PyPI wheel. */
export interface PluginPackage {
  /** The PyPI project name, e.g. `xla-cpu-pjrt`. */
  readonly pkg: string;
  /** The exact version pinned, e.g. `0.0.1`. */
  readonly version: string;
  /** The path of the plugin inside the wheel. */
  readonly member: string;
  /** The plugin's file name in the cache folder. */
  readonly fileName: string;
  /** sha256 (hex) of each known wheel file, by wheel file name. */
  readonly wheelSha256: Readonly<Record<string, string>>;
  /**
   * When true, a wheel whose file name is not in {@link wheelSha256} is refused. When false, such
   * a wheel (another CPU architecture, say) is accepted on the strength of pip's TLS download.
   */
  readonly requireKnownSha: boolean;
}

/**
 * The XLA CPU plugin (PJRT C API 0.81), published on PyPI by Google's ML org. Only an x86_64
 * manylinux wheel exists, so the sha pin is strict.
 */
export const CPU_PLUGIN: PluginPackage = {
  pkg: 'xla-cpu-pjrt',
  version: '0.0.1',
  member: 'xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so',
  fileName: 'xla_cpu_pjrt.so',
  wheelSha256: {
    'xla_cpu_pjrt-0.0.1-py3-none-manylinux_2_27_x86_64.whl':
      '55837b6b7b47daa717f2d9a5a03563ea0ceaa338d06a81a1e2d3f060d960decc',
  },
  requireKnownSha: true,
};

/**
 * The CUDA 13 plugin from JAX 0.10.2 (the jaxlib version the design notes were measured with).
 * The x86_64 wheel's sha256 was measured with `pip download --no-deps jax-cuda13-pjrt==0.10.2`
 * (124 MB, wheel holds a 401 MB `xla_cuda_plugin.so`). Other architectures' wheels (aarch64) are
 * not pinned: they are accepted as pip delivered them over TLS.
 *
 * The plugin needs the CUDA runtime libraries at load time (the `nvidia-*` wheels that
 * `pip install jax[cuda13]` brings, or a system CUDA 13 install); downloading the plugin alone
 * does not provide them.
 */
export const CUDA_PLUGIN: PluginPackage = {
  pkg: 'jax-cuda13-pjrt',
  version: '0.10.2',
  member: 'jax_plugins/xla_cuda13/xla_cuda_plugin.so',
  fileName: 'xla_cuda_plugin.so',
  wheelSha256: {
    'jax_cuda13_pjrt-0.10.2-py3-none-manylinux_2_27_x86_64.whl':
      'a97e9cabe0e21d8dbcc70bd909ca1c34cd546d3ce2d94b4cd907a8d4f6179f6a',
  },
  requireKnownSha: false,
};

/** The cache folder of a package: `<root>/plugins/<pkg>-<version>`. */
export function packageDir(p: PluginPackage): string {
  return cachePath('plugins', `${p.pkg}-${p.version}`);
}

/** The cached plugin path of a package: `<root>/plugins/<pkg>-<version>/<fileName>`. */
export function cachedPluginPath(p: PluginPackage): string {
  return join(packageDir(p), p.fileName);
}
