// Builds a wasi:http/proxy component from a hand-written core module in WAT, offline, with jco's JS API:
// parse (WAT -> core wasm), componentEmbed (attach the world's WIT), componentNew. The wasi 0.2.x WIT comes from
// jco itself (lib/wit/builtin/VERSION), VERSION being the one the WAT imports (e.g. wasi:http/types@0.2.12).
//
// jco is resolved from guest-sdk/javascript/node_modules (the JavaScript guest toolchain, what CI installs),
// else bench/peers/node_modules (the benchmark's peers); ISOLATE_JCO_NODE_MODULES names another directory.
// Exit status 3 means no jco was found (the test suite skips on it, naming the directories).
//
// Usage: node tests/components/build.mjs IN.wat OUT.wasm
//
// `jco embed` (1.35) fails with NotFound: its bundled wasm-tools reads the WIT directory through
// preview2-shim's filesystem, which has no preopened directory unless one is set, as done below
// (bench/peers/wasi-http.mjs does the same for the benchmark's guest).
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node build.mjs IN.wat OUT.wasm");
  process.exit(2);
}

const candidates = [
  ...(process.env.ISOLATE_JCO_NODE_MODULES ? [resolve(process.env.ISOLATE_JCO_NODE_MODULES)] : []),
  join(root, "guest-sdk", "javascript", "node_modules"),
  join(root, "bench", "peers", "node_modules"),
];
const nodeModules = candidates.find((dir) =>
  existsSync(join(dir, "@bytecodealliance", "jco", "package.json")) &&
  existsSync(join(dir, "@bytecodealliance", "jco-transpile", "package.json")));
if (!nodeModules) {
  console.error(`jco is not installed in any of: ${candidates.join(", ")}`);
  process.exit(3);
}
const jco = join(nodeModules, "@bytecodealliance", "jco");
const jcoVersion = JSON.parse(readFileSync(join(jco, "package.json"), "utf8")).version;

const wat = readFileSync(resolve(input), "utf8");
const versions = new Set([...wat.matchAll(/"wasi:[a-z-]+\/[a-z-]+@(0\.2\.\d+)"/g)].map((m) => m[1]));
if (versions.size !== 1) {
  console.error(`${input} must import wasi 0.2.x interfaces at exactly one version, not: ${[...versions].join(", ") || "none"}`);
  process.exit(2);
}
const [wasi] = versions;
const builtin = join(jco, "lib", "wit", "builtin", wasi);
if (!existsSync(builtin)) {
  console.error(`jco ${jcoVersion} (${jco}) ships no WIT for wasi ${wasi}`);
  process.exit(2);
}

// The same module instance jco-transpile's wasm-tools imports: resolved from jco-transpile's own directory.
const require = createRequire(join(nodeModules, "@bytecodealliance", "jco-transpile", "package.json"));
const filesystem = await import(pathToFileURL(require.resolve("@bytecodealliance/preview2-shim/filesystem")).href);
filesystem._setPreopens({ "/": "/" });
const { parse, componentEmbed, componentNew } = await import(pathToFileURL(join(jco, "dist", "api.js")).href);

const wit = mkdtempSync(join(tmpdir(), "isolate-component-wit-"));
try {
  cpSync(builtin, join(wit, "deps"), { recursive: true });
  writeFileSync(join(wit, "world.wit"),
    `package isolate:tests;\n\nworld portable {\n  include wasi:http/proxy@${wasi};\n}\n`);
  const core = await parse(wat);
  const embedded = await componentEmbed({ binary: core, witPath: resolve(wit), world: "portable" });
  const component = await componentNew(embedded, []);
  writeFileSync(resolve(output), component);
  console.log(`${output}: ${component.length} bytes (jco ${jcoVersion} from ${nodeModules}, wasi ${wasi})`);
} finally {
  rmSync(wit, { recursive: true, force: true });
}
