// Builds a wasi:http/proxy component from a JavaScript module with componentize-js's JS API: the version pinned
// by package-lock.json beside this file (jco's own `componentize` command would run the older componentize-js
// that jco depends on). `isolate build` runs it; usage:
//
//   node componentize.mjs TOOLCHAIN SOURCE.js OUTPUT.wasm WIT_DIR WORLD
//
// TOOLCHAIN is the directory whose node_modules hold the pinned packages (this one after `npm ci`, or the copy
// an installed isolate keeps in its cache). componentize-js pre-initialises with Wizer: the engine starts and the
// module is parsed, compiled and its top level evaluated at build time, so a request runs only the handler.
// Errors (a syntax error with its code frame, a throw at the top level) go to stderr, and the exit status is 1.
import { readFile, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [toolchain, source, output, witPath, worldName] = process.argv.slice(2);
if (!toolchain || !source || !output || !witPath || !worldName) {
  console.error("usage: node componentize.mjs TOOLCHAIN SOURCE.js OUTPUT.wasm WIT_DIR WORLD");
  process.exit(2);
}
const packageJson = join(resolve(toolchain), "node_modules", "@bytecodealliance", "componentize-js", "package.json");
const require = createRequire(packageJson);

// componentize-js says only "failed to parse JS source, encountered [N] errors": the parser it uses (oxc) has the
// code frames, so a source that does not parse is parsed again here to show them.
async function syntaxErrors(path) {
  const oxc = await import(pathToFileURL(require.resolve("oxc-parser")).href);
  const parsed = await oxc.parseAsync(path, await readFile(path, "utf8"));
  return parsed.errors.map((error) => (error.codeframe || error.message).trim()).join("\n\n");
}

try {
  const { componentize } = await import(pathToFileURL(join(packageJson, "..", "src", "componentize.js")).href);
  const { component } = await componentize({ sourcePath: resolve(source), witPath: resolve(witPath), worldName });
  await writeFile(resolve(output), component);
} catch (error) {
  let message = String(error?.message ?? error);
  if (message.startsWith("failed to parse JS source")) {
    message = (await syntaxErrors(resolve(source)).catch(() => "")) || message;
  }
  console.error(message);
  process.exit(1);
}
