;; A portable wasi:http/proxy guest, written by hand: a core module implementing
;; wasi:http/incoming-handler@0.2.12 through the canonical ABI, importing only wasi:http/types and
;; wasi:io/streams (no WASI context, no toolchain). tests/components/build.mjs wraps it into a component
;; (jco: embed the world's WIT, then new); tests/test_component_portability.py runs that one component under
;; `wasmtime serve` and under isolate and expects the same answers from both.
;;
;; Behaviour (every answer carries x-guest, x-method and x-path-with-query; x-echo is copied from the request,
;; every value in order):
;;   /            (any query)  200 text/plain "hello from a portable wasi:http component\n" (no body for HEAD)
;;   /echo        (any query)  200 application/octet-stream, the request body (read to its end, 4 KiB per read)
;;                             with x-body-length
;;   anything else             404 text/plain "no route for PATH-WITH-QUERY\n"
;;
;; Ownership, per the WIT: the request's headers (a child of the request), the input stream (a child of the
;; incoming body), the incoming body and the request are dropped, children first; the outgoing headers go
;; to the response's constructor, the response and the outparam to response-outparam.set, the output stream
;; is dropped before outgoing-body.finish consumes the body.
(module
  (import "wasi:http/types@0.2.12" "[method]incoming-request.method" (func $req_method (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $req_pwq (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.headers" (func $req_headers (param i32) (result i32)))
  ;; (self, result out): result<own<incoming-body>>, the handle at out + 4
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $req_consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $body_stream (param i32 i32)))
  ;; (self, name ptr, name len, result out): list<list<u8>> as (ptr, len) at out
  (import "wasi:http/types@0.2.12" "[method]fields.get" (func $fields_get (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields_new (result i32)))
  ;; (self, name ptr, name len, value ptr, value len, result out): result<_, header-error>
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields_append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response_new (param i32) (result i32)))
  ;; (self, status): result (0 ok, 1 err)
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.set-status-code"
    (func $response_set_status (param i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response_body (param i32 i32)))
  ;; (param, result discriminant, payload flattened with error-code's cases): result<own<outgoing-response>, error-code>
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam_set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $out_body_write (param i32 i32)))
  ;; (this, trailers option discriminant, trailers, result out): result<_, error-code>
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $out_body_finish (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]fields" (func $fields_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-body" (func $body_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-request" (func $request_drop (param i32)))
  ;; (self, max len, result out): result<list<u8>, stream-error>: list (ptr, len) at out + 4, or the error's
  ;; case at out + 4 (0 last-operation-failed with an own<error> at out + 8, 1 closed)
  (import "wasi:io/streams@0.2.12" "[method]input-stream.blocking-read" (func $blocking_read (param i32 i64 i32)))
  ;; (self, bytes ptr, bytes len, result out): result<_, stream-error>; at most 4096 bytes per call
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush"
    (func $write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $in_stream_drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $out_stream_drop (param i32)))

  (memory (export "memory") 1)

  ;; method names, one per 8 bytes, in the order of wasi:http/types' `method` cases; their lengths at 336
  (data (i32.const 256) "GET\00\00\00\00\00HEAD\00\00\00\00POST\00\00\00\00PUT\00\00\00\00\00DELETE\00\00CONNECT\00OPTIONS\00TRACE\00\00\00PATCH")
  (data (i32.const 336) "\03\04\04\03\06\07\07\05\05")
  (data (i32.const 512) "x-guest")                        ;; 7
  (data (i32.const 528) "portable-wat")                   ;; 12
  (data (i32.const 544) "x-method")                       ;; 8
  (data (i32.const 560) "x-path-with-query")              ;; 17
  (data (i32.const 584) "x-echo")                         ;; 6
  (data (i32.const 592) "content-type")                   ;; 12
  (data (i32.const 608) "text/plain; charset=utf-8")      ;; 25
  (data (i32.const 640) "application/octet-stream")       ;; 24
  (data (i32.const 672) "x-body-length")                  ;; 13
  (data (i32.const 688) "/echo")                          ;; 5
  (data (i32.const 704) "hello from a portable wasi:http component\0a")  ;; 42
  (data (i32.const 768) "no route for ")                  ;; 13
  (data (i32.const 784) "\0a")                            ;; 1
  ;; 2048: result slots the host writes into (16 bytes each): 2048 scratch, 2064 method, 2080 path-with-query,
  ;; 2096 x-echo values; 2112..2139: decimal digits of x-body-length
  ;; 4096..20479: the request body's chunks as (ptr, len) pairs, at most 2048 of them
  (global $heap (mut i32) (i32.const 20480))

  ;; The host allocates here for what it returns (strings, lists, the body's chunks): a bump allocator, never
  ;; freed (a fresh instance serves each request), growing memory as far as needed.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
    (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then unreachable))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                            (i32.const 16)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old_size)
      (then (memory.copy (local.get $p) (local.get $old)
                         (select (local.get $old_size) (local.get $size)
                                 (i32.lt_u (local.get $old_size) (local.get $size))))))
    (local.get $p))

  ;; fields.append, trapping on a header-error (the guest only appends names and values it knows are valid)
  (func $append (param $fields i32) (param $name i32) (param $name_len i32) (param $value i32) (param $value_len i32)
    (call $fields_append (local.get $fields) (local.get $name) (local.get $name_len) (local.get $value)
                         (local.get $value_len) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable)))

  ;; blocking-write-and-flush takes at most 4096 bytes a call
  (func $write (param $stream i32) (param $ptr i32) (param $len i32)
    (local $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (local.set $n (select (i32.const 4096) (local.get $len) (i32.gt_u (local.get $len) (i32.const 4096))))
        (call $write_and_flush (local.get $stream) (local.get $ptr) (local.get $n) (i32.const 2048))
        (if (i32.load8_u (i32.const 2048)) (then unreachable))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $more))))

  ;; `value` in decimal, written backwards from 2140: returns how many digits
  (func $decimal (param $value i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 2140))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $digit (local.get $value)))
    (i32.sub (i32.const 2140) (local.get $p)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $out i32)
    (local $method i32) (local $method_ptr i32) (local $method_len i32)
    (local $pwq_ptr i32) (local $pwq_len i32) (local $path_len i32)
    (local $in_headers i32) (local $echo_ptr i32) (local $echo_count i32) (local $i i32)
    (local $in_body i32) (local $in_stream i32) (local $chunks i32) (local $total i32) (local $n i32)
    (local $route i32) (local $headers i32) (local $response i32) (local $body i32) (local $stream i32)

    ;; the method: a name from the table, or `other`'s string
    (call $req_method (local.get $request) (i32.const 2064))
    (local.set $method (i32.load8_u (i32.const 2064)))
    (if (i32.eq (local.get $method) (i32.const 9))
      (then (local.set $method_ptr (i32.load (i32.const 2068)))
            (local.set $method_len (i32.load (i32.const 2072))))
      (else (local.set $method_ptr (i32.add (i32.const 256) (i32.shl (local.get $method) (i32.const 3))))
            (local.set $method_len (i32.load8_u (i32.add (i32.const 336) (local.get $method))))))

    ;; the path with its query (none: empty), and the path's length (up to a `?`)
    (call $req_pwq (local.get $request) (i32.const 2080))
    (if (i32.load8_u (i32.const 2080))
      (then (local.set $pwq_ptr (i32.load (i32.const 2084)))
            (local.set $pwq_len (i32.load (i32.const 2088)))))
    (block $end
      (loop $scan
        (br_if $end (i32.eq (local.get $path_len) (local.get $pwq_len)))
        (br_if $end (i32.eq (i32.load8_u (i32.add (local.get $pwq_ptr) (local.get $path_len))) (i32.const 63)))
        (local.set $path_len (i32.add (local.get $path_len) (i32.const 1)))
        (br $scan)))

    ;; x-echo's values (lowered into this memory), then the headers go: a child of the request
    (local.set $in_headers (call $req_headers (local.get $request)))
    (call $fields_get (local.get $in_headers) (i32.const 584) (i32.const 6) (i32.const 2096))
    (local.set $echo_ptr (i32.load (i32.const 2096)))
    (local.set $echo_count (i32.load (i32.const 2100)))
    (call $fields_drop (local.get $in_headers))

    ;; the body, read to its end: chunks of at most 4 KiB, kept where the host wrote them
    (call $req_consume (local.get $request) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $in_body (i32.load (i32.const 2052)))
    (call $body_stream (local.get $in_body) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $in_stream (i32.load (i32.const 2052)))
    (block $closed
      (loop $read
        (call $blocking_read (local.get $in_stream) (i64.const 4096) (i32.const 2048))
        (if (i32.load8_u (i32.const 2048))
          (then
            (br_if $closed (i32.eq (i32.load8_u (i32.const 2052)) (i32.const 1)))
            unreachable))  ;; last-operation-failed: the request body broke
        (local.set $n (i32.load (i32.const 2056)))
        (if (local.get $n)
          (then
            (if (i32.eq (local.get $chunks) (i32.const 2048)) (then unreachable))
            (i32.store (i32.add (i32.const 4096) (i32.shl (local.get $chunks) (i32.const 3)))
                       (i32.load (i32.const 2052)))
            (i32.store (i32.add (i32.const 4100) (i32.shl (local.get $chunks) (i32.const 3))) (local.get $n))
            (local.set $chunks (i32.add (local.get $chunks) (i32.const 1)))
            (local.set $total (i32.add (local.get $total) (local.get $n)))))
        (br $read)))
    (call $in_stream_drop (local.get $in_stream))
    (call $body_drop (local.get $in_body))
    (call $request_drop (local.get $request))

    ;; route: 1 for "/", 2 for "/echo", 0 for anything else
    (if (i32.and (i32.eq (local.get $path_len) (i32.const 1)) (i32.eq (i32.load8_u (local.get $pwq_ptr)) (i32.const 47)))
      (then (local.set $route (i32.const 1))))
    (if (i32.eq (local.get $path_len) (i32.const 5))
      (then
        (if (i32.and (i32.eq (i32.load (local.get $pwq_ptr)) (i32.load (i32.const 688)))
                     (i32.eq (i32.load8_u (i32.add (local.get $pwq_ptr) (i32.const 4))) (i32.load8_u (i32.const 692))))
          (then (local.set $route (i32.const 2))))))

    (local.set $headers (call $fields_new))
    (call $append (local.get $headers) (i32.const 512) (i32.const 7) (i32.const 528) (i32.const 12))
    (call $append (local.get $headers) (i32.const 544) (i32.const 8) (local.get $method_ptr) (local.get $method_len))
    (call $append (local.get $headers) (i32.const 560) (i32.const 17) (local.get $pwq_ptr) (local.get $pwq_len))
    (block $copied
      (loop $copy
        (br_if $copied (i32.eq (local.get $i) (local.get $echo_count)))
        (call $append (local.get $headers) (i32.const 584) (i32.const 6)
                      (i32.load (i32.add (local.get $echo_ptr) (i32.shl (local.get $i) (i32.const 3))))
                      (i32.load (i32.add (local.get $echo_ptr) (i32.add (i32.shl (local.get $i) (i32.const 3))
                                                                        (i32.const 4)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (if (i32.eq (local.get $route) (i32.const 2))
      (then
        (call $append (local.get $headers) (i32.const 592) (i32.const 12) (i32.const 640) (i32.const 24))
        (local.set $n (call $decimal (local.get $total)))  ;; the digits end at 2140
        (call $append (local.get $headers) (i32.const 672) (i32.const 13) (i32.sub (i32.const 2140) (local.get $n))
                      (local.get $n)))
      (else
        (call $append (local.get $headers) (i32.const 592) (i32.const 12) (i32.const 608) (i32.const 25))))

    (local.set $response (call $response_new (local.get $headers)))
    (if (i32.eqz (local.get $route))
      (then (if (call $response_set_status (local.get $response) (i32.const 404)) (then unreachable))))
    (call $response_body (local.get $response) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $body (i32.load (i32.const 2052)))
    (call $outparam_set (local.get $out) (i32.const 0) (local.get $response)
                        (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $out_body_write (local.get $body) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $stream (i32.load (i32.const 2052)))
    (if (i32.ne (local.get $method) (i32.const 1))  ;; HEAD: headers only
      (then
        (if (i32.eq (local.get $route) (i32.const 1))
          (then (call $write (local.get $stream) (i32.const 704) (i32.const 42))))
        (if (i32.eq (local.get $route) (i32.const 2))
          (then
            (local.set $i (i32.const 0))
            (block $written
              (loop $chunk
                (br_if $written (i32.eq (local.get $i) (local.get $chunks)))
                (call $write (local.get $stream)
                             (i32.load (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 3))))
                             (i32.load (i32.add (i32.const 4100) (i32.shl (local.get $i) (i32.const 3)))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $chunk)))))
        (if (i32.eqz (local.get $route))
          (then
            (call $write (local.get $stream) (i32.const 768) (i32.const 13))
            (call $write (local.get $stream) (local.get $pwq_ptr) (local.get $pwq_len))
            (call $write (local.get $stream) (i32.const 784) (i32.const 1))))))
    (call $out_stream_drop (local.get $stream))
    (call $out_body_finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable)))
)
