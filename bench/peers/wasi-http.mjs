// Builds a wasi:http proxy component (what `wasmtime serve` runs) from a hand-written core module in WAT,
// offline, with jco's JS API: parse (WAT -> core wasm), componentEmbed (attach the world's WIT), componentNew.
// The wasi 0.2.x WIT packages come from jco itself (lib/wit/builtin/). Usage: node wasi-http.mjs IN.wat OUT.wasm
//
// `jco embed` (1.35) fails with NotFound: its bundled wasm-tools reads the WIT directory through
// preview2-shim's filesystem, which has no preopened directory unless one is set, as done below.
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const WASI = "0.2.12";
const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node_modules", "@bytecodealliance", "jco-transpile", "package.json"));

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node wasi-http.mjs IN.wat OUT.wasm");
  process.exit(2);
}

// The same module instance jco-transpile's wasm-tools imports: resolved from jco-transpile's own directory.
const filesystem = await import(pathToFileURL(require.resolve("@bytecodealliance/preview2-shim/filesystem")).href);
filesystem._setPreopens({ "/": "/" });
const { parse, componentEmbed, componentNew } = await import(
  pathToFileURL(join(here, "node_modules", "@bytecodealliance", "jco", "dist", "api.js")).href
);

const wit = mkdtempSync(join(tmpdir(), "isolate-bench-wit-"));
try {
  const builtin = join(here, "node_modules", "@bytecodealliance", "jco", "lib", "wit", "builtin", WASI);
  cpSync(builtin, join(wit, "deps"), { recursive: true });
  writeFileSync(
    join(wit, "world.wit"),
    `package isolate:bench;\n\nworld hello {\n  include wasi:http/proxy@${WASI};\n}\n`,
  );
  const core = await parse(readFileSync(resolve(input), "utf8"));
  const embedded = await componentEmbed({ binary: core, witPath: resolve(wit), world: "hello" });
  const component = await componentNew(embedded, []);
  writeFileSync(resolve(output), component);
  console.log(`${output}: ${component.length} bytes`);
} finally {
  rmSync(wit, { recursive: true, force: true });
}
