"""The C and Rust SDKs' memory: their heaps (in the pages a module has, growing only when full), the
64 KiB stack `isolate build` links, and how to raise it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from isolate import GuestError, Host, Request
from isolate.build import DEFAULT_STACK_SIZE, build, stack_size
from isolate.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "guest-sdk"
PAGE = 65536
LONG = {"timeout": 10.0}

C_HEAP = r"""
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isolate.h"

size_t malloc_usable_size(void *p);

static uint32_t seed = 12345;
static uint32_t rnd(void) { seed = seed * 1103515245u + 12345u; return seed >> 8; }

#define SLOTS 64
static unsigned char *ptr[SLOTS];
static size_t len[SLOTS];
static unsigned char tag[SLOTS];

static int intact(int i) {
    for (size_t k = 0; k < len[i]; k++) if (ptr[i][k] != (unsigned char)(tag[i] + k)) return 0;
    return 1;
}

static size_t pick_size(void) {
    uint32_t r = rnd() % 100;
    if (r < 60) return rnd() % 64;
    if (r < 90) return rnd() % 4096;
    if (r < 98) return rnd() % 70000;
    return 60000 + rnd() % 300000;
}

/* Random malloc, realloc, calloc, posix_memalign and free, every block filled and checked. */
static const char *torture(int steps) {
    for (int step = 0; step < steps; step++) {
        int i = (int)(rnd() % SLOTS);
        if (ptr[i] && !intact(i)) return "a block was overwritten";
        switch (rnd() % 5) {
        case 0:
        case 1:
            free(ptr[i]);
            len[i] = pick_size();
            ptr[i] = malloc(len[i]);
            break;
        case 2: {
            size_t n = pick_size();
            unsigned char *moved = realloc(ptr[i], n);
            if (!moved) return "realloc failed";
            for (size_t k = 0; k < (len[i] < n ? len[i] : n); k++)
                if (moved[k] != (unsigned char)(tag[i] + k)) return "realloc lost data";
            ptr[i] = moved;
            len[i] = n;
            break;
        }
        case 3:
            free(ptr[i]);
            len[i] = pick_size();
            ptr[i] = calloc(len[i], 1);
            for (size_t k = 0; ptr[i] && k < len[i]; k++) if (ptr[i][k]) return "calloc gave dirty memory";
            break;
        default: {
            free(ptr[i]);
            len[i] = pick_size();
            size_t align = (size_t)16 << (rnd() % 9);
            void *p = NULL;
            if (posix_memalign(&p, align, len[i])) return "posix_memalign failed";
            if ((uintptr_t)p % align) return "posix_memalign misaligned";
            ptr[i] = p;
        }
        }
        if (!ptr[i]) return "out of memory";
        if ((uintptr_t)ptr[i] % 16) return "a block is not 16-byte aligned";
        if (malloc_usable_size(ptr[i]) < len[i]) return "malloc_usable_size is too small";
        tag[i] = (unsigned char)rnd();
        for (size_t k = 0; k < len[i]; k++) ptr[i][k] = (unsigned char)(tag[i] + k);
    }
    for (int i = 0; i < SLOTS; i++) {
        if (ptr[i] && !intact(i)) return "a block was overwritten";
        free(ptr[i]);
        ptr[i] = NULL;
    }
    return NULL;
}

static size_t pages(void) { return __builtin_wasm_memory_size(0); }
static void *volatile kept;
/* clang takes malloc for a builtin that leaves errno alone: read it where it cannot tell */
__attribute__((noinline)) static int error_number(void) { return errno; }

isolate_response *isolate_on_request(const isolate_request *req) {
    char text[256];
    const char *failed = NULL;
    size_t before = pages();
    if (isolate_str_eq(req->path, "/torture")) {
        failed = torture(3000);
    } else if (isolate_str_eq(req->path, "/reuse")) { /* a freed large block serves the next one */
        for (int i = 0; i < 100 && !failed; i++) {
            void *big = malloc(1 << 20), *small = malloc(16);
            if (!big || !small) failed = "out of memory";
            free(big);
        }
    } else if (isolate_str_eq(req->path, "/limits")) { /* `kept`: clang may not assume a malloc succeeds */
        errno = 0;
        kept = malloc((size_t)0x80000000u);
        if (kept || error_number() != ENOMEM) failed = "a 2 GiB malloc did not fail with ENOMEM";
        size_t n = (size_t)1 << 31;
        kept = calloc(n, 4);
        if (kept) failed = "an overflowing calloc succeeded";
        void *p = NULL;
        if (posix_memalign(&p, 24, 8) != EINVAL) failed = "posix_memalign took a bad alignment";
        char *copy = strdup("libc's own calls");
        if (!copy || strcmp(copy, "libc's own calls")) failed = "strdup";
        uintptr_t where = (uintptr_t)copy;
        free(copy);
        kept = malloc(17); /* strdup's block came from this heap, freed back to its top */
        if ((uintptr_t)kept != where) failed = "strdup did not use the SDK heap";
    }
    isolate_response *res = isolate_response_new(failed ? 500 : 200);
    snprintf(text, sizeof text, "%s %zu %zu", failed ? failed : "ok", before, pages());
    isolate_response_body_str(res, text);
    return res;
}
"""

RUST_HEAP = r"""
use isolate_sdk::{Error, Request, Response};
use std::alloc::{alloc, dealloc, Layout};
use std::collections::BTreeMap;

struct Rng(u32);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1103515245).wrapping_add(12345);
        self.0 >> 8
    }
    fn size(&mut self) -> usize {
        let r = self.next() % 100;
        (if r < 60 { self.next() % 64 } else if r < 90 { self.next() % 4096 } else if r < 98 { self.next() % 70000 }
         else { 60000 + self.next() % 300000 }) as usize
    }
}

fn pattern(tag: u8, n: usize) -> impl Iterator<Item = u8> {
    (0..n).map(move |k| tag.wrapping_add(k as u8))
}

fn torture(steps: usize) -> Result<(), &'static str> {
    let mut rng = Rng(12345);
    let mut slots: Vec<(Vec<u8>, u8)> = (0..64).map(|_| (Vec::new(), 0)).collect();
    let mut map = BTreeMap::new();
    for step in 0..steps {
        let i = (rng.next() % 64) as usize;
        let (v, tag) = &mut slots[i];
        if !v.iter().copied().eq(pattern(*tag, v.len())) {
            return Err("a block was overwritten");
        }
        *tag = rng.next() as u8;
        let n = rng.size();
        match rng.next() % 4 {
            0 => *v = pattern(*tag, n).collect(),
            1 => {
                // grow or shrink in place where the allocator can
                let keep = v.len().min(n);
                v.truncate(keep);
                if rng.next() % 2 == 0 {
                    v.shrink_to_fit();
                }
                v.clear();
                v.extend(pattern(*tag, n));
            }
            2 => {
                let mut grown = Vec::new();
                for b in pattern(*tag, n) {
                    grown.push(b);
                }
                *v = grown;
            }
            _ => {
                let align = 16usize << (rng.next() % 9);
                let layout = Layout::from_size_align(n.max(1), align).unwrap();
                unsafe {
                    let p = alloc(layout);
                    if p.is_null() || p as usize % align != 0 {
                        return Err("aligned allocation failed or misaligned");
                    }
                    p.write_bytes(0xa5, n.max(1));
                    dealloc(p, layout);
                }
                *v = pattern(*tag, n).collect();
            }
        }
        map.insert(step % 512, format!("{}-{}", step, n));
    }
    for (v, tag) in &slots {
        if !v.iter().copied().eq(pattern(*tag, v.len())) {
            return Err("a block was overwritten");
        }
    }
    if map.len() != 512usize.min(steps) {
        return Err("the map lost entries");
    }
    Ok(())
}

fn pages() -> usize {
    core::arch::wasm32::memory_size(0)
}

fn handle(req: Request) -> Result<Response, Error> {
    let before = pages();
    let result = match req.path.as_str() {
        "/torture" => torture(3000),
        "/reuse" => {
            let mut keep = Vec::new();
            for _ in 0..100 {
                let big = vec![1u8; 1 << 20];
                keep.push(Box::new(big.len()));
                drop(big);
            }
            Ok(())
        }
        _ => Ok(()),
    };
    let text = format!("{} {} {}", result.err().unwrap_or("ok"), before, pages());
    Ok(Response::text(text))
}

isolate_sdk::handler!(handle);
"""

DEEP_STACK = r"""
#include <stdio.h>
#include "isolate.h"

/* 100 KiB of address-taken locals on clang's shadow stack */
__attribute__((noinline)) static int deep(int n) {
    volatile char frame[1024];
    frame[n % 1024] = (char)n;
    return n ? deep(n - 1) + frame[0] : frame[0];
}

isolate_response *isolate_on_request(const isolate_request *req) {
    (void)req;
    char text[32];
    snprintf(text, sizeof text, "%d", deep(100));
    isolate_response *res = isolate_response_new(200);
    isolate_response_body_str(res, text);
    return res;
}
"""


def c_project(parent: Path, name: str, source: str) -> Path:
    project = parent / name
    project.mkdir()
    (project / f"{name}.c").write_text(source)
    return project


def rust_project(parent: Path, name: str, source: str, sdk: str = "") -> Path:
    project = parent / name
    (project / "src").mkdir(parents=True)
    (project / "src" / "lib.rs").write_text(source)
    (project / "Cargo.toml").write_text(f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n'
                                        f'[lib]\ncrate-type = ["cdylib"]\n\n[dependencies]\n'
                                        f'isolate_sdk = {{ path = "{SDK / "rust"}"{sdk} }}\n')
    return project


def minimum_pages(wasm: Path) -> int:
    module = wasmtime.Module(wasmtime.Engine(), wasm.read_bytes())
    (memory,) = [e.type for e in module.exports if isinstance(e.type, wasmtime.MemoryType)]
    return memory.limits.min


def answer(host: Host, name: str, path: str) -> tuple[str, int, int]:
    response = host.invoke(name, Request(path=path))
    text, before, after = response.body.decode().rsplit(" ", 2)
    assert response.status == 200, text
    return text, int(before), int(after)


@pytest.mark.parametrize("language", ["c", "rust"])
def test_heap_survives_random_allocations(host: Host, tmp_path: Path, language: str) -> None:
    project = c_project(tmp_path, "cheap", C_HEAP) if language == "c" else rust_project(tmp_path, "rheap", RUST_HEAP)
    result = build(project)
    assert result.warnings == ()
    host.deploy("heap", result.output.read_bytes(), limits=LONG)
    initial = minimum_pages(result.output)
    assert initial <= 2
    text, before, _ = answer(host, "heap", "/torture")
    assert text == "ok" and before == initial  # nothing grew memory before the handler ran
    text, before, after = answer(host, "heap", "/reuse")  # 100 MiB allocated, 1 MiB at a time
    assert text == "ok" and after - before <= 1.2 * (1 << 20) // PAGE + 2
    if language == "c":
        assert answer(host, "heap", "/limits")[0] == "ok"


@pytest.mark.parametrize("sample, initial", [("hello", 1), ("echo", 1), ("transform", 1), ("todo", 1)])
def test_sdk_samples_answer_without_growing_memory(host: Host, sample: str, initial: int) -> None:
    wasm = build(ROOT / "samples" / sample).output
    assert minimum_pages(wasm) == initial  # a 32 KiB stack, then data and the start of the heap
    host.deploy(sample, wasm.read_bytes(), variables={"greeting": "Hello"})
    response = host.invoke(sample, Request(method="POST", path="/", body=b"x" * 100,
                                           headers=[("content-type", "application/octet-stream")]))
    assert response.info["memory_bytes"] == initial * PAGE


def test_rust_sdk_without_default_features_keeps_rusts_allocator(host: Host, tmp_path: Path) -> None:
    project = rust_project(tmp_path, "own", RUST_HEAP, sdk=", default-features = false")
    result = build(project)
    host.deploy("own", result.output.read_bytes(), limits=LONG)
    text, before, _ = answer(host, "own", "/torture")
    assert text == "ok" and before > minimum_pages(result.output)  # dlmalloc grew memory for isolate_alloc
    stamp = json.loads((project / "build" / ".own.wasm.recipe").read_text())
    assert stamp["sdk_features"] == []


def test_stack_size_default_override_and_rebuild(host: Host, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOLATE_STACK_SIZE", raising=False)
    assert stack_size() == DEFAULT_STACK_SIZE == 32 * 1024
    project = c_project(tmp_path, "deep", DEEP_STACK)
    small = build(project)
    assert minimum_pages(small.output) == 1 and build(project).cached  # the stack, data and heap in one page
    host.deploy("deep", small.output.read_bytes())
    with pytest.raises(GuestError) as info:  # 100 KiB of frames overflow the 32 KiB stack: a clean trap
        host.invoke("deep", Request())
    assert info.value.kind == "trap" and info.value.to_dict()["trap_code"] == "memory_out_of_bounds"

    monkeypatch.setenv("ISOLATE_STACK_SIZE", "256KiB")
    large = build(project)
    assert not large.cached and minimum_pages(large.output) == 5  # another stack size rebuilds
    host.deploy("deep", large.output.read_bytes())
    assert host.invoke("deep", Request()).status == 200
    assert build(project).cached
    assert not build(project, stack=64 * 1024).cached and minimum_pages(small.output) == 2  # stack, then data


@pytest.mark.parametrize("value", ["12", "100", "1TiB", "lots"])
def test_bad_stack_sizes_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(BuildError, match="stack size"):
        build(c_project(tmp_path, "any", DEEP_STACK), stack=value)
