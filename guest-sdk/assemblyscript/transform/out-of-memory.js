// An asc transform (`isolate build` passes it with --transform): the stub runtime tells the host when
// memory.grow fails, so the host reports `memory_limit` (ABI.md, "Out of memory").
//
// AssemblyScript's stub runtime answers a refused memory.grow with a bare `unreachable()`, which the
// host can only report as a `trap`. A custom runtime (`--runtime path`) would fix that, but asc
// treats any runtime not named "stub" as the incremental GC's and instruments every function with a
// shadow stack. So the stub itself is patched, once parsed and before the program is built: the one
// line that gives up on a grow first calls the host's `isolate.out_of_memory` with the bytes wanted.
// The runtime's text is checked, so a new asc release that moves the line fails the build loudly
// instead of silently dropping the report.

const RUNTIME = "~lib/rt/stub";
const GIVE_UP = "if (memory.grow(pagesNeeded) < 0) unreachable(); // out of memory";
const REPORT = "if (memory.grow(pagesNeeded) < 0) { __isolate_out_of_memory(<u32>(newOffset - offset)); unreachable(); }";
const IMPORT = '// @ts-ignore: decorator\n@external("isolate", "out_of_memory")\n' +
  "declare function __isolate_out_of_memory(requested: u32): void;\n";

export default class OutOfMemory {
  afterParse(parser) {
    const at = parser.sources.findIndex((source) => source.internalPath === RUNTIME);
    if (at < 0) return; // another runtime: nothing to patch
    const source = parser.sources[at];
    if (source.text.split(GIVE_UP).length !== 2) {
      throw new Error(`isolate-sdk: ${RUNTIME} no longer gives up on memory.grow as expected ` +
        `(\`${GIVE_UP}\`); update guest-sdk/assemblyscript/transform/out-of-memory.js`);
    }
    parser.sources.splice(at, 1);
    parser.donelog.delete(source.internalPath); // else parseFile takes the runtime for parsed and skips it
    parser.parseFile(source.text.replace(GIVE_UP, REPORT) + "\n" + IMPORT, source.normalizedPath, false);
  }
}
