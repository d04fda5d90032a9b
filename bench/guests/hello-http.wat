;; The `wasmtime serve` peer's guest: a hand-written core module implementing
;; wasi:http/incoming-handler@0.2.12 through the canonical ABI, no toolchain and no WASI context.
;; bench/peers/wasi-http.mjs wraps it into a wasi:http proxy component (jco: embed, then new).
;; It answers every request exactly as the C hello sample (samples/hello) answers GET /hello on a node of
;; region "local": the benchmark fetches once from both and refuses to run if the bodies differ.
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields_new (result i32)))
  ;; (self, name ptr, name len, value ptr, value len, result out): result<_, header-error>
  (import "wasi:http/types@0.2.12" "[method]fields.append"
    (func $fields_append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response_new (param i32) (result i32)))
  ;; (self, result out): result<own<outgoing-body>>, the handle at out + 4
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response_body (param i32 i32)))
  ;; (param, result discriminant, payload flattened with error-code's cases): result<own<outgoing-response>, error-code>
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam_set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  ;; (self, result out): result<own<output-stream>>, the handle at out + 4
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body_write (param i32 i32)))
  ;; (this, trailers option discriminant, trailers, result out): result<_, error-code>
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body_finish (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-request" (func $request_drop (param i32)))
  ;; (self, bytes ptr, bytes len, result out): result<_, stream-error>
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush"
    (func $write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream_drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))

  (data (i32.const 1024) "content-type")  ;; 12 bytes
  (data (i32.const 1040) "text/plain; charset=utf-8")  ;; 25 bytes
  (data (i32.const 1088) "Hello, world! (from C, region local, client in local)\0a")  ;; 54 bytes
  ;; 2048..2063: result slots the host writes into

  ;; The host allocates here only to return error payloads (strings): a bump allocator, never freed
  ;; (a fresh instance serves each request).
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
    (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))))
    (local.get $p))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $out i32)
    (local $headers i32) (local $response i32) (local $body i32) (local $stream i32)
    (call $request_drop (local.get $request))
    (local.set $headers (call $fields_new))
    (call $fields_append (local.get $headers) (i32.const 1024) (i32.const 12) (i32.const 1040) (i32.const 25)
                         (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $response (call $response_new (local.get $headers)))  ;; status 200 by default
    (call $response_body (local.get $response) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $body (i32.load (i32.const 2052)))
    (call $outparam_set (local.get $out) (i32.const 0) (local.get $response)
                        (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body_write (local.get $body) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $stream (i32.load (i32.const 2052)))
    (call $write_and_flush (local.get $stream) (i32.const 1088) (i32.const 54) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (call $stream_drop (local.get $stream))
    (call $body_finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable)))
)
