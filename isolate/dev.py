"""`isolate dev`: build and deploy projects or manifests, then rebuild and redeploy what changed on every save."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import manifest as manifests
from .build import BuildResult, build
from .errors import BuildError, InvalidConfig, IsolateError, ManifestError
from .manifest import Manifest, ModuleSpec
from .node import Node
from .registry import validate_name

DEFAULT_DATA_DIR = Path(".isolate-dev")
"""Dev state of its own, so `isolate dev` never contends with `isolate serve` for `.isolate`'s lock."""
CATCH_ALL = "/..."
"""The route a project directory is deployed under: every path and method (with other targets beside
it, the paths under /NAME)."""
# Changes are grouped until none came for STEP ms (at most DEBOUNCE): an editor's save is a few
# events within milliseconds, and watchfiles' default (1.6 s) would be most of the reload time.
STEP_MS, DEBOUNCE_MS = 30, 400
# How often the watcher looks at its stop event: the bound on how long `isolate dev` takes to exit.
POLL_MS = 200
WATCH_RETRY_S = 1.0
"""The wait before watching again after watchfiles failed (the stop event cuts it short)."""
_NOT_SOURCES = frozenset({"build", "target", "node_modules", "__pycache__"})
"""Directories of a project that hold outputs, not sources: a build writing there must not retrigger."""


@dataclass(frozen=True, slots=True)
class Round:
    """What one build-and-deploy round did."""

    built: tuple[str, ...] = ()
    """Modules whose build ran (or was up to date) and succeeded."""
    failed: tuple[str, ...] = ()
    deployed: tuple[str, ...] = ()
    """Modules that got a new version (an unchanged digest gets none)."""
    rewatch: bool = False
    """A manifest or a module file changed: the watcher starts over (the set of files may have changed, and
    an editor that saves by renaming leaves the old file watched)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DevLoop:
    """The projects behind a set of targets (project directories and manifests), built in debug mode
    and deployed through the node as one manifest (so `Node.apply_manifest`'s rules hold)."""

    def __init__(self, node: Node, targets: Sequence[Path], *,
                 report: Callable[[str], None] = _stderr) -> None:
        if not targets:
            raise InvalidConfig("isolate dev needs a project directory or a manifest")
        self.node = node
        self.targets = [Path(t).resolve() for t in targets]
        self.report = report
        self.manifest = self._load()
        self._outputs: dict[str, Path] = {}  # module -> its last good build's output
        self._errors: dict[str, str] = {}  # module -> the message its requests answer with

    # -- the targets ----------------------------------------------------------------------------

    def _load(self) -> Manifest:
        """Every target as one manifest: a directory is a module of its name on a catch-all route."""
        modules: list[ModuleSpec] = []
        routes: list[dict[str, object]] = []
        first: Manifest | None = None
        alone = len(self.targets) == 1
        for target in self.targets:
            if target.is_dir():
                validate_name(target.name)
                modules.append(ModuleSpec(target.name, target))
                # Several projects cannot all take every path: each then takes the paths under its name.
                routes.append({"path": CATCH_ALL if alone else f"/{target.name}{CATCH_ALL}", "module": target.name})
                continue
            if target.suffix != ".toml":
                raise InvalidConfig(f"{target} is neither a project directory nor a manifest (.toml)")
            loaded = manifests.load(target)
            first = first or loaded
            modules += loaded.modules
            routes += loaded.routes
        names = [spec.name for spec in modules]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise InvalidConfig(f"two projects or manifest modules are named {', '.join(twice)}")
        base = first or Manifest(self.targets[0], (), ())
        return dataclasses.replace(base, modules=tuple(modules), routes=tuple(routes), cluster="")

    def projects(self) -> dict[str, Path]:
        """Modules built from a source directory, by name."""
        return _dirs(self.manifest)

    def watch_paths(self) -> list[Path]:
        """Project directories (recursively), manifests and modules named as files (those files alone:
        a manifest's directory may hold a virtualenv or a data directory not worth watching)."""
        return _watch_paths(self.targets, self.manifest)

    def affected(self, paths: Iterable[Path]) -> tuple[set[str], bool, bool]:
        """(projects whose sources changed, whether a module file changed, whether a manifest did)."""
        projects = self.projects()
        manifest_files = {t for t in self.targets if t.suffix == ".toml" and not t.is_dir()}  # not a dir gone
        module_files = {spec.path for spec in self.manifest.modules if not spec.path.is_dir()}
        changed: set[str] = set()
        files = manifest = False
        for path in paths:
            manifest |= path in manifest_files
            files |= path in module_files
            for name, root in projects.items():
                # The root itself: a project directory back after it was deleted.
                if path == root or (path.is_relative_to(root) and _is_source(path.relative_to(root))):
                    changed.add(name)
        return changed, files, manifest

    # -- rounds ---------------------------------------------------------------------------------

    def start(self) -> Round:
        """Build every project (outputs already up to date are kept) and deploy."""
        return self._round(set(self.projects()), force=False)

    def changed(self, paths: Iterable[Path]) -> Round:
        """Rebuild the projects whose sources are among `paths` and redeploy what changed."""
        started = time.perf_counter()
        projects, files, manifest = self.affected(paths)
        if manifest:
            try:
                reloaded = self._load()
            except IsolateError as exc:
                self.report(f"isolate dev: {exc.kind}: {exc.detail} (keeping the manifest as it was)")
            else:
                added = set(_dirs(reloaded)) - set(self.projects())
                self.manifest = reloaded
                projects |= added
        if not (projects or files or manifest):
            return Round()
        # A file watched by itself that an editor replaced (write, then rename) is watched no more.
        result = dataclasses.replace(self._round(projects, force=True), rewatch=files or manifest)
        if result.deployed:
            self.report(f"isolate dev: serving {', '.join(result.deployed)} "
                        f"({(time.perf_counter() - started) * 1000:.0f} ms after the change)")
        unchanged = sorted(set(result.built) - set(result.deployed))
        if unchanged:
            self.report(f"isolate dev: {', '.join(unchanged)} unchanged (same code and settings): nothing redeployed")
        return result

    def _round(self, projects: set[str], *, force: bool) -> Round:
        """Build `projects` (forced: a save since the last build may share its mtime), then deploy."""
        built, failed = [], []
        for name in sorted(projects):
            path = self.projects().get(name)
            if path is None:
                continue
            try:
                result = build(path, force=force, debug=True)
            except BuildError as exc:
                failed.append(name)
                self._fail(name, f"{name}: the build of {path} failed: {exc.detail}")
                continue
            built.append(name)
            self._built(name, result)
        deployed, applied = self._deploy()
        # Fixed: a project that built and loaded, a module file that loaded (projects not rebuilt in
        # this round keep their error: their last good output was applied, not their sources).
        fixed = (set(built) & applied) | (applied - set(self.projects()))
        for name in sorted(fixed):
            if name not in self._errors:
                continue
            self._errors.pop(name)
            self.node.set_build_error(name, None)
            self.report(f"isolate dev: {name} builds again")
        return Round(tuple(built), tuple(failed), tuple(deployed))

    def _built(self, name: str, result: BuildResult) -> None:
        self._outputs[name] = result.output
        for warning in result.warnings:
            self.report(warning)
        if not result.cached:
            self.report(f"isolate dev: built {name} in {result.seconds:.2f} s")

    def _fail(self, name: str, message: str) -> None:
        """Print the failure, and answer the module's requests with it (not with its last good version)."""
        self.report(f"isolate dev: {message}")
        self._errors[name] = message
        self.node.set_build_error(name, message)

    def _deploy(self) -> tuple[list[str], set[str]]:
        """Apply the manifest with each project's last good output in place of its directory; returns
        the modules deployed (a new version) and those applied (deployed or unchanged).

        A project that never built here is left out, and its routes too if it was never deployed (a
        route must name a deployed module); one that fails to load (bad wasm, bad ABI) is marked as
        failed and left out in the same way, and the rest applied."""
        broken: set[str] = set()
        for _ in range(len(self.manifest.modules) + 1):
            stored = set(self.node.host.module_names())
            modules, routes = [], []
            absent = set()
            for spec in self.manifest.modules:
                output = self._outputs.get(spec.name) if spec.path.is_dir() else spec.path
                if output is None or spec.name in broken:
                    if spec.name not in stored:
                        absent.add(spec.name)
                    continue
                modules.append(dataclasses.replace(spec, path=output))
            routes = [route for route in self.manifest.routes if route["module"] not in absent]
            try:
                result = self.node.apply_manifest(dataclasses.replace(
                    self.manifest, modules=tuple(modules), routes=tuple(routes)))
            except ManifestError as exc:
                name = exc.extra.get("module")
                if not isinstance(name, str) or name in broken:
                    self.report(f"isolate dev: {exc.kind}: {exc.detail}")
                    return [], set()
                broken.add(name)
                self._fail(name, exc.detail)
                continue
            return list(result.deployed), {spec.name for spec in modules}
        return [], set()

    # -- watching -------------------------------------------------------------------------------

    def watch(self, stop: threading.Event) -> None:
        """Rebuild and redeploy on every change until `stop` is set (run it on a thread of its own).

        Only paths that exist are watched (watchfiles refuses a missing one): a path deleted is said so
        here and watched again, and rebuilt, once it exists again; a watch that fails is retried."""
        import watchfiles

        shown: tuple[list[Path], list[Path]] | None = None
        gone: set[Path] = set()  # watch paths missing at the last look
        back: set[Path] = set()  # watch paths that came back, for the next round
        failure = ""
        while not stop.is_set():
            wanted = self.watch_paths()
            present = {p for p in wanted if p.exists()}
            paths = [p for p in wanted if p in present]
            back |= gone & present
            gone = set(wanted) - present
            if shown != (paths, sorted(gone)):
                shown = (paths, sorted(gone))
                if paths:
                    self.report(f"isolate dev: watching {', '.join(str(p) for p in paths)}")
                if gone:
                    self.report(f"isolate dev: {', '.join(str(p) for p in sorted(gone))} not found: "
                                "watched again once it exists")
            if not paths:
                stop.wait(POLL_MS / 1000)
                continue
            try:
                # A timeout yields nothing: the moment to look for paths gone or back, and for `back`'s round.
                for changes in watchfiles.watch(*paths, stop_event=stop, step=STEP_MS, debounce=DEBOUNCE_MS,
                                                rust_timeout=POLL_MS, yield_on_timeout=True,
                                                raise_interrupt=False, watch_filter=_watched):
                    failure = ""
                    changed, back = {Path(path) for _, path in changes} | back, set()
                    if changed and self._changed_safely(changed):
                        break
                    if any(not p.exists() for p in paths) or any(p.exists() for p in gone):
                        break
            except Exception as exc:  # the watch itself (a path removed meanwhile, inotify's limits): retry
                message = f"{type(exc).__name__}: {exc}"
                if message != failure:
                    self.report(f"isolate dev: watching failed: {message} (retrying)")
                    failure = message
                stop.wait(WATCH_RETRY_S)

    def _changed_safely(self, paths: set[Path]) -> bool:
        """`changed(paths)`; whether to watch anew. The watcher outlives any one round."""
        try:
            return self.changed(paths).rewatch
        except Exception as exc:
            self.report(f"isolate dev: rebuild failed unexpectedly: {type(exc).__name__}: {exc}")
            return False


def _dirs(manifest: Manifest) -> dict[str, Path]:
    return {spec.name: spec.path for spec in manifest.modules if spec.path.is_dir()}


def _watch_paths(targets: Sequence[Path], manifest: Manifest) -> list[Path]:
    files = [t for t in targets if not t.is_dir()] + [s.path for s in manifest.modules if not s.path.is_dir()]
    return sorted({*_dirs(manifest).values(), *files})


def _is_source(relative: Path) -> bool:
    """Whether a path inside a project can change its build (outputs, hidden files and editors' droppings
    cannot)."""
    parts = relative.parts
    if not parts or parts[0] in _NOT_SOURCES or any(p.startswith(".") for p in parts):
        return False
    name = parts[-1]
    return not (name.endswith(("~", ".swp", ".swx", ".tmp")) or name == "4913")  # 4913: vim's probe


def _watched(change: object, path: str) -> bool:
    """watchfiles' filter: drop what no project could build from before it reaches a round."""
    name = Path(path).name
    return not (name.startswith(".") or name.endswith(("~", ".swp", ".swx")) or name == "4913")
