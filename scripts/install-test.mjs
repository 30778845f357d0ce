#!/usr/bin/env node
// Install test (run by .ci/run, not by `npm test`): the package as a user gets it.
//
// 1. `npm pack` (prepack compiles TypeScript) and check what the tarball holds.
// 2. Install the tarball into a fresh temporary project with a PATH that has no C++ compiler and
//    no cmake (a folder of symlinks to node, npm, sh, python3; CC/CXX=/bin/false), so the install
//    must use the prebuilt addon from prebuilds/ (run `npm run build:prebuild` first). Asserts no
//    source build happened (no build/ folder in the installed package).
// 3. In that project: `import { Runtime } from 'cascade-xla'`, open the CPU runtime, compile and
//    run a tiny StableHLO program, check the numbers; then `Cascade.load()` the default model (when
//    the cache has it) and generate a few greedy tokens; `cascade-xla --version`; the README's first
//    ```js example run as written; `npx cascade-xla chat` with piped input.
// 4. A broken prebuild (a truncated .node): the install script reports it and falls back to a
//    source build (which fails here: no cmake), without crashing; at run time the package throws
//    NativeAddonError naming the file.
// 5. The plugin download failing at install time (no python3 on PATH, empty cache) leaves the
//    install successful with a warning; Runtime.open() then throws a typed error.
//
// The plugin comes from the already populated cache (CASCADE_CACHE_DIR, else the default cache),
// so nothing large is downloaded; `--fresh-cache` uses an empty temp cache (downloads ~250 MB).
// `--keep` keeps the temp folder.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync, cpSync, realpathSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const keep = process.argv.includes('--keep');
const freshCache = process.argv.includes('--fresh-cache');
const say = (msg) => process.stderr.write(`install-test: ${msg}\n`);
let failures = 0;
const check = (ok, what, detail = '') => {
  say(`${ok ? 'ok  ' : 'FAIL'} ${what}${!ok && detail ? `\n${detail}` : ''}`);
  if (!ok) failures++;
  return ok;
};

// --- what the tests need -------------------------------------------------------------------
const prebuildDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const prebuilds = existsSync(prebuildDir) ? readdirSync(prebuildDir).filter((f) => f.endsWith('.node')) : [];
if (prebuilds.length === 0) {
  say(`no prebuilt addon in ${prebuildDir}: run \`npm run build:prebuild\` first`);
  process.exit(1);
}
const { cacheRoot } = await import(pathToFileURL(path.join(root, 'dist', 'utils', 'cache.js')).href);

function which(cmd) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, cmd);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'cascade-install-test-'));
const cleanup = () => {
  if (keep) say(`kept ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
};

try {
  // --- 1. pack ---------------------------------------------------------------------------------
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }),
  )[0];
  const tarball = path.join(tmp, packed.filename);
  const files = packed.files.map((f) => f.path);
  say(`packed ${packed.filename}: ${(packed.size / 1e3).toFixed(1)} kB, ${packed.entryCount} files, unpacked ${(packed.unpackedSize / 1e6).toFixed(2)} MB`);
  const has = (p) => files.includes(p);
  check(files.some((f) => /^prebuilds\/linux-x64\/cascade-xla\.napi\.(glibc|musl)\.node$/.test(f)) || process.platform !== 'linux', 'tarball holds the prebuilt addon');
  for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli/main.js', 'scripts/install.mjs', 'scripts/addon-check.mjs', 'CMakeLists.txt', 'cmake/PjrtHeaders.cmake', 'binding/addon.cc', 'LICENSE', 'README.md']) {
    check(has(f), `tarball holds ${f}`);
  }
  const unwanted = files.filter((f) => /^(build|test|src|node_modules|docs\/api|cpp\/tests|cpp\/tools|\.ci)\//.test(f) || f.endsWith('.map') || f.endsWith('.tgz'));
  check(unwanted.length === 0, 'tarball holds no build trees, tests, sources maps or TypeScript sources', unwanted.join('\n'));

  // --- 2. install without a compiler -------------------------------------------------------------
  const bin = path.join(tmp, 'bin');
  mkdirSync(bin);
  const tools = { node: process.execPath, npm: which('npm'), npx: which('npx'), sh: which('sh') ?? '/bin/sh', python3: which('python3') };
  for (const [name, target] of Object.entries(tools)) if (target) symlinkSync(realpathSync(target), path.join(bin, name));
  // npm and npx are scripts that find their own files from their real path, which the symlinks keep.
  const noPython = path.join(tmp, 'bin-nopython');
  mkdirSync(noPython);
  for (const name of ['node', 'npm', 'npx', 'sh']) if (tools[name]) symlinkSync(realpathSync(tools[name]), path.join(noPython, name));

  const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'INIT_CWD'));
  const cache = freshCache ? path.join(tmp, 'cache') : cacheRoot();
  const env = { ...cleanEnv, PATH: bin, CC: '/bin/false', CXX: '/bin/false', CASCADE_CACHE_DIR: cache };
  delete env.CASCADE_PJRT_PLUGIN;
  delete env.CASCADE_SKIP_PLUGIN_DOWNLOAD;
  delete env.CASCADE_BUILD_FROM_SOURCE;
  check(spawnSync('sh', ['-c', 'command -v cmake || command -v g++ || command -v c++ || command -v cc'], { env }).status !== 0, 'the test PATH has no cmake and no C/C++ compiler');

  const project = path.join(tmp, 'project');
  mkdirSync(project);
  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'install-test', private: true, type: 'module' }, null, 2));
  const t0 = Date.now();
  const inst = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--foreground-scripts', tarball], {
    cwd: project, env, encoding: 'utf8',
  });
  const installSeconds = (Date.now() - t0) / 1000;
  const instOut = `${inst.stdout}\n${inst.stderr}`;
  if (!check(inst.status === 0, `npm install of the tarball (${installSeconds.toFixed(1)} s)`, instOut)) throw new Error('install failed');
  const pkgDir = path.join(project, 'node_modules', 'cascade-xla');
  check(/using the prebuilt addon prebuilds\//.test(instOut), 'the install used the prebuilt addon', instOut);
  check(!existsSync(path.join(pkgDir, 'build')), 'no source build happened (no build/ in the installed package)');
  check(!/building the native addon with cmake-js/.test(instOut), 'the install did not start cmake-js', instOut);
  check(/PJRT CPU plugin: /.test(instOut), 'the install found the XLA CPU PJRT plugin', instOut);

  // --- 3. use it -----------------------------------------------------------------------------------
  writeFileSync(
    path.join(project, 'smoke.mjs'),
    `import { Runtime, tensor, toNumbers } from 'cascade-xla';
const rt = await Runtime.open({ plugin: 'cpu', devices: 1 });
const exe = await rt.compile(\`
func.func public @main(%x: tensor<4xf32>, %y: tensor<4xf32>) -> tensor<4xf32> {
  %z = stablehlo.multiply %x, %y : tensor<4xf32>
  %w = stablehlo.add %z, %x : tensor<4xf32>
  return %w : tensor<4xf32>
}\`);
const out = await exe.execute([[tensor('f32', [4], [1, 2, 3, 4]), tensor('f32', [4], [10, 20, 30, 40])]]);
console.log(JSON.stringify({ platform: rt.platform, devices: rt.devices.length, result: toNumbers(out[0][0]) }));
await rt.close();
`,
  );
  const smoke = spawnSync('node', ['smoke.mjs'], { cwd: project, env, encoding: 'utf8', timeout: 300_000 });
  let result;
  try {
    result = JSON.parse(smoke.stdout.trim().split('\n').pop());
  } catch {
    result = undefined;
  }
  check(
    smoke.status === 0 && JSON.stringify(result?.result) === JSON.stringify([11, 42, 93, 164]),
    `import { Runtime } from 'cascade-xla' runs a StableHLO program on ${result?.platform ?? '?'} (x*y+x = ${JSON.stringify(result?.result)})`,
    `${smoke.stdout}\n${smoke.stderr}`,
  );
  // Text generation through the installed package: the default model from the cache (the test
  // suite's model tests put it there), a few greedy tokens in target-only mode.
  // TODO: when the cascade mode (tiny -> draft -> target) is done, generate with mode 'cascade'
  // too and check its tokens equal these (the exactness invariant at temperature 0).
  const model = path.join(cache, 'models', 'SmolLM2-135M-Instruct-Q4_1.gguf');
  if (existsSync(model)) {
    writeFileSync(
      path.join(project, 'generate.mjs'),
      `import { Cascade } from 'cascade-xla';
const c = await Cascade.load({ target: ${JSON.stringify(model)}, devices: 1, maxContext: 64 });
const r = await c.generate('The capital of France is', { maxTokens: 4, temperature: 0, mode: 'target' });
console.log(JSON.stringify({ text: r.text, tokens: r.tokens }));
await c.dispose();
`,
    );
    const gen = spawnSync('node', ['generate.mjs'], { cwd: project, env, encoding: 'utf8', timeout: 300_000 });
    let g;
    try {
      g = JSON.parse(gen.stdout.trim().split('\n').pop());
    } catch {
      g = undefined;
    }
    check(
      gen.status === 0 && Array.isArray(g?.tokens) && g.tokens.length >= 1 && g.tokens.length <= 4 && g.text.trim() !== '',
      `Cascade.load() + generate() with the default model (${JSON.stringify(g?.text)})`,
      `${gen.stdout}\n${gen.stderr}`,
    );
  } else {
    say(`skip generation: no cached default model at ${model} (npm test downloads it)`);
  }
  const help = spawnSync(path.join(project, 'node_modules', '.bin', 'cascade-xla'), ['--help'], { cwd: project, env, encoding: 'utf8' });
  check(help.status === 0 && /info/.test(help.stdout), 'the cascade-xla CLI runs (--help)', `${help.stdout}\n${help.stderr}`);
  const version = spawnSync(path.join(project, 'node_modules', '.bin', 'cascade-xla'), ['--version'], { cwd: project, env, encoding: 'utf8' });
  check(version.status === 0 && version.stdout.trim() === packed.version, `cascade-xla --version prints ${packed.version}`, `${version.stdout}\n${version.stderr}`);
  if (existsSync(model)) {
    // The README's first example, as a user copies it (the README of the installed package).
    const readme = readFileSync(path.join(pkgDir, 'README.md'), 'utf8');
    const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
    if (check(example !== undefined, "the installed README.md has a ```js example")) {
      writeFileSync(path.join(project, 'hello.mjs'), example);
      const hello = spawnSync('node', ['hello.mjs'], { cwd: project, env, encoding: 'utf8', timeout: 600_000 });
      check(hello.status === 0 && /\d+ tokens at [\d.]+ tokens\/s\s*$/.test(hello.stdout), "README.md's example runs as written (node hello.mjs)", `${hello.stdout}\n${hello.stderr}`);
    }
    // `npx cascade-xla chat`, its input piped (the terminal case is test/chat-cli.test.ts).
    const chat = spawnSync('npx', ['--no-install', 'cascade-xla', 'chat', '--max-tokens', '16', '--max-context', '256'], {
      cwd: project, env, encoding: 'utf8', timeout: 600_000, input: 'What is the capital of France?\n/exit\n',
    });
    check(chat.status === 0 && /Paris/.test(chat.stdout), 'npx cascade-xla chat answers (input piped)', `${chat.stdout}\n${chat.stderr}`);
  }

  // --- 4. a broken prebuild ------------------------------------------------------------------------
  // A copy of the installed package inside the project, so it finds the same node_modules.
  const broken = path.join(project, 'broken', 'cascade-xla');
  cpSync(pkgDir, broken, { recursive: true });
  const brokenNode = path.join(broken, 'prebuilds', `${process.platform}-${process.arch}`, prebuilds[0]);
  truncateSync(brokenNode, 64);
  const reinstall = spawnSync('node', ['scripts/install.mjs'], {
    cwd: broken, env: { ...env, CASCADE_SKIP_PLUGIN_DOWNLOAD: '1' }, encoding: 'utf8', timeout: 300_000,
  });
  const reOut = `${reinstall.stdout}\n${reinstall.stderr}`;
  check(reinstall.signal === null && reinstall.status === 1, 'a broken prebuild fails the install script cleanly (exit 1, no crash)', reOut);
  check(/does not load here/.test(reOut) && /building from source instead/.test(reOut), 'it says the prebuild does not load and falls back to a source build', reOut);
  check(/native build failed/.test(reOut) && /apt-get install cmake g\+\+/.test(reOut), 'the failed source build says what to install', reOut);
  const useBroken = spawnSync(
    'node',
    ['--input-type=module', '-e', `import { Runtime } from ${JSON.stringify(pathToFileURL(path.join(broken, 'dist', 'index.js')).href)};
try { await Runtime.open({ plugin: 'cpu', devices: 1 }); console.log('opened?!'); }
catch (e) { console.log(JSON.stringify({ name: e.name, file: e.file, message: e.message })); }`],
    { cwd: project, env, encoding: 'utf8' },
  );
  let err;
  try {
    err = JSON.parse(useBroken.stdout.trim());
  } catch {
    err = undefined;
  }
  check(
    err?.name === 'NativeAddonError' && err.file === brokenNode && /npm rebuild cascade-xla/.test(err.message),
    'using a broken addon throws NativeAddonError naming the file and the fix',
    `${useBroken.stdout}\n${useBroken.stderr}`,
  );

  // --- 5. the plugin download failing at install time ---------------------------------------------------
  const emptyCache = path.join(tmp, 'empty-cache');
  const offlineEnv = { ...env, PATH: noPython, CASCADE_CACHE_DIR: emptyCache };
  const offline = spawnSync('node', ['scripts/install.mjs'], { cwd: pkgDir, env: offlineEnv, encoding: 'utf8', timeout: 300_000 });
  const offOut = `${offline.stdout}\n${offline.stderr}`;
  check(offline.status === 0, 'a failed plugin download does not fail the install', offOut);
  check(/WARNING: could not download the XLA CPU PJRT plugin/.test(offOut) && /plugin fetch cpu/.test(offOut), 'it warns and says how to fix it', offOut);
  const firstUse = spawnSync(
    'node',
    ['--input-type=module', '-e', `import { Runtime } from 'cascade-xla';
try { await Runtime.open({ plugin: 'cpu', devices: 1 }); console.log('opened?!'); }
catch (e) { console.log(JSON.stringify({ name: e.name, message: e.message })); }`],
    { cwd: project, env: offlineEnv, encoding: 'utf8', timeout: 120_000 },
  );
  let useErr;
  try {
    useErr = JSON.parse(firstUse.stdout.trim().split('\n').pop());
  } catch {
    useErr = undefined;
  }
  check(
    ['DownloadError', 'PluginNotFoundError'].includes(useErr?.name) && /CASCADE_PJRT_PLUGIN/.test(useErr.message),
    `first use without the plugin throws a typed error (${useErr?.name})`,
    `${firstUse.stdout}\n${firstUse.stderr}`,
  );

  say(`install time from the tarball: ${installSeconds.toFixed(1)} s`);
} catch (error) {
  check(false, 'install test', error.stack ?? String(error));
} finally {
  cleanup();
}
if (failures) {
  say(`${failures} check(s) failed`);
  process.exit(1);
}
say('all checks passed');
