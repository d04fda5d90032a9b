;; A wasi:http/proxy guest that calls out, written by hand: a core module implementing
;; wasi:http/incoming-handler@0.2.12 through the canonical ABI and calling wasi:http/outgoing-handler.handle,
;; importing only wasi:http/types, wasi:http/outgoing-handler, wasi:io/poll and wasi:io/streams (no WASI
;; context, no toolchain). tests/components/build.mjs wraps it into a component (the proxy world imports
;; outgoing-handler); tests/test_component_outbound.py deploys it and checks the call goes through the module's
;; allowed_hosts and outbound limits.
;;
;; Behaviour, for any method and path (the incoming request's body is not read):
;;   the request's headers name the call: x-target-authority (host[:port]; absent: none is set, which the host
;;   refuses as HTTP-request-URI-invalid), x-target-path (path with query; absent: none, i.e. "/"), and
;;   optionally x-timeout-ms (decimal: a request-options with that first-byte timeout). The call is a GET over
;;   http, with the one header x-probe: outbound-wat.
;;   The guest waits with future-incoming-response.subscribe + pollable.block (never wasi:io/poll.poll), then
;;   future-incoming-response.get, and answers
;;     - ok(response): the upstream's status and body (read to its end, 4 KiB per read), with x-upstream-status
;;       (decimal) and x-upstream-origin (the upstream's x-origin values, in order);
;;     - err(error-code), from handle or from get: 502 text/plain, the error-code's case name (for
;;       internal-error(some(message)): "internal-error: MESSAGE");
;;     - a target header set-authority or set-path-with-query refuses: 400 text/plain "bad x-target-...".
;;   Every answer carries x-guest: outbound-wat.
;;
;; Ownership, per the WIT: the incoming request's headers (its child) go before the request; the outgoing
;; request's headers go to its constructor, the request and its options to handle (which consumes both, error
;; or not); the pollable (a child of the future) is dropped before the future; the upstream's headers (a child
;; of the response), then the input stream (a child of the incoming body), the body, the response, children
;; first. The answer is built as portable-http.wat builds it.
(module
  (import "wasi:http/types@0.2.12" "[method]incoming-request.headers" (func $req_headers (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.get" (func $fields_get (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields_new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields_append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]fields" (func $fields_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-request" (func $request_drop (param i32)))
  ;; the outbound request: (headers) -> own<outgoing-request>
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-request" (func $oreq_new (param i32) (result i32)))
  ;; (self, option disc, scheme disc (0 HTTP, 1 HTTPS, 2 other), other's ptr, len): result (0 ok)
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-scheme"
    (func $oreq_set_scheme (param i32 i32 i32 i32 i32) (result i32)))
  ;; (self, option disc, ptr, len): result (0 ok)
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-authority"
    (func $oreq_set_authority (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-path-with-query"
    (func $oreq_set_path (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]outgoing-request" (func $oreq_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[constructor]request-options" (func $options_new (result i32)))
  ;; (self, option disc, nanoseconds): result (0 ok)
  (import "wasi:http/types@0.2.12" "[method]request-options.set-first-byte-timeout"
    (func $options_set_first_byte (param i32 i32 i64) (result i32)))
  ;; (request, option disc, options, result out): result<own<future-incoming-response>, error-code>, 8-aligned:
  ;; the discriminant at out, the future (ok) or the error-code (err) at out + 8
  (import "wasi:http/outgoing-handler@0.2.12" "handle" (func $handle (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.subscribe"
    (func $future_subscribe (param i32) (result i32)))
  ;; (self, result out): option<result<result<own<incoming-response>, error-code>>>: the option's discriminant at
  ;; out, the outer result's at out + 8, the inner one's at out + 16, its payload at out + 24
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.get" (func $future_get (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]future-incoming-response" (func $future_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.status" (func $resp_status (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.headers" (func $resp_headers (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-response.consume" (func $resp_consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-response" (func $resp_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $body_stream (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-body" (func $body_drop (param i32)))
  ;; the answer, as portable-http.wat writes it
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response_new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.set-status-code"
    (func $response_set_status (param i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response_body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam_set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $out_body_write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $out_body_finish (param i32 i32 i32 i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $block (param i32)))
  (import "wasi:io/poll@0.2.12" "[resource-drop]pollable" (func $pollable_drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[method]input-stream.blocking-read" (func $blocking_read (param i32 i64 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush"
    (func $write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $in_stream_drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $out_stream_drop (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 256) "x-guest")                        ;; 7
  (data (i32.const 264) "outbound-wat")                   ;; 12
  (data (i32.const 280) "x-target-authority")             ;; 18
  (data (i32.const 304) "x-target-path")                  ;; 13
  (data (i32.const 320) "x-timeout-ms")                   ;; 12
  (data (i32.const 336) "x-probe")                        ;; 7
  (data (i32.const 344) "x-upstream-status")              ;; 17
  (data (i32.const 368) "x-upstream-origin")              ;; 17
  (data (i32.const 392) "x-origin")                       ;; 8
  (data (i32.const 400) "content-type")                   ;; 12
  (data (i32.const 416) "text/plain; charset=utf-8")      ;; 25
  (data (i32.const 448) "bad x-target-authority\0a")      ;; 23
  (data (i32.const 480) "bad x-target-path\0a")           ;; 18
  (data (i32.const 504) ": ")                             ;; 2
  ;; error-code's case names, in the order of its cases: (u16 offset from 1024, u16 length) each at 832
  (data (i32.const 832) "\00\00\0b\00\0b\00\09\00\14\00\15\00\29\00\17\00\40\00\19\00\59\00\19\00\72\00\12\00\84\00\15\00\99\00\12\00\ab\00\17\00\c2\00\18\00\da\00\18\00\f2\00\12\00\04\01\15\00\19\01\12\00\2b\01\13\00\3e\01\1c\00\5a\01\16\00\70\01\1b\00\8b\01\18\00\a3\01\19\00\bc\01\20\00\dc\01\18\00\f4\01\21\00\15\02\19\00\2e\02\18\00\46\02\21\00\67\02\19\00\80\02\17\00\97\02\22\00\b9\02\1a\00\d3\02\1d\00\f0\02\1c\00\0c\03\15\00\21\03\13\00\34\03\13\00\47\03\0d\00\54\03\13\00\67\03\0e\00")
  (data (i32.const 1024) "DNS-timeoutDNS-errordestination-not-founddestination-unavailable")
  (data (i32.const 1088) "destination-IP-prohibiteddestination-IP-unroutableconnection-ref")
  (data (i32.const 1152) "usedconnection-terminatedconnection-timeoutconnection-read-timeo")
  (data (i32.const 1216) "utconnection-write-timeoutconnection-limit-reachedTLS-protocol-e")
  (data (i32.const 1280) "rrorTLS-certificate-errorTLS-alert-receivedHTTP-request-deniedHT")
  (data (i32.const 1344) "TP-request-length-requiredHTTP-request-body-sizeHTTP-request-met")
  (data (i32.const 1408) "hod-invalidHTTP-request-URI-invalidHTTP-request-URI-too-longHTTP")
  (data (i32.const 1472) "-request-header-section-sizeHTTP-request-header-sizeHTTP-request")
  (data (i32.const 1536) "-trailer-section-sizeHTTP-response-trailer-sizeHTTP-response-inco")
  (data (i32.const 1600) "mpleteHTTP-response-header-section-sizeHTTP-response-header-size")
  (data (i32.const 1664) "HTTP-response-body-sizeHTTP-response-trailer-section-sizeHTTP-re")
  (data (i32.const 1728) "sponse-trailer-sizeHTTP-response-transfer-codingHTTP-response-co")
  (data (i32.const 1792) "ntent-codingHTTP-response-timeoutHTTP-upgrade-failedHTTP-protoco")
  (data (i32.const 1856) "l-errorloop-detectedconfiguration-errorinternal-error")
  ;; 2048: result slots the host writes into (16 bytes each): 2048 scratch, 2064 x-target-authority values,
  ;; 2080 x-target-path values, 2096 x-timeout-ms values, 2112 x-origin values; 2128..2155: decimal digits
  ;; (ending at 2156); 3072..3111: handle's and future-incoming-response.get's results (8-aligned)
  ;; 4096..20479: the answer's body chunks as (ptr, len) pairs, at most 2048 of them
  (global $heap (mut i32) (i32.const 20480))
  (global $chunks (mut i32) (i32.const 0))
  (global $upstream_status (mut i32) (i32.const 0))  ;; 0: the answer is not the upstream's

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

  (func $append (param $fields i32) (param $name i32) (param $name_len i32) (param $value i32) (param $value_len i32)
    (call $fields_append (local.get $fields) (local.get $name) (local.get $name_len) (local.get $value)
                         (local.get $value_len) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable)))

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

  ;; `value` in decimal, written backwards from 2156: returns how many digits
  (func $decimal (param $value i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 2156))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $value) (i32.const 10))))
      (local.set $value (i32.div_u (local.get $value) (i32.const 10)))
      (br_if $digit (local.get $value)))
    (i32.sub (i32.const 2156) (local.get $p)))

  ;; one more chunk of the answer's body
  (func $chunk (param $ptr i32) (param $len i32)
    (if (i32.eqz (local.get $len)) (then (return)))
    (if (i32.eq (global.get $chunks) (i32.const 2048)) (then unreachable))
    (i32.store (i32.add (i32.const 4096) (i32.shl (global.get $chunks) (i32.const 3))) (local.get $ptr))
    (i32.store (i32.add (i32.const 4100) (i32.shl (global.get $chunks) (i32.const 3))) (local.get $len))
    (global.set $chunks (i32.add (global.get $chunks) (i32.const 1))))

  ;; the error-code whose discriminant is at `at` (its payload at at + 8) as the answer's body
  (func $error_body (param $at i32)
    (local $case i32) (local $entry i32)
    (local.set $case (i32.load8_u (local.get $at)))
    (if (i32.gt_u (local.get $case) (i32.const 38)) (then unreachable))
    (local.set $entry (i32.add (i32.const 832) (i32.shl (local.get $case) (i32.const 2))))
    (call $chunk (i32.add (i32.const 1024) (i32.load16_u (local.get $entry)))
                 (i32.load16_u (i32.add (local.get $entry) (i32.const 2))))
    ;; internal-error(option<string>): the option's discriminant at at + 8, the string at at + 12
    (if (i32.and (i32.eq (local.get $case) (i32.const 38)) (i32.eq (i32.load8_u (i32.add (local.get $at) (i32.const 8)))
                                                                  (i32.const 1)))
      (then
        (call $chunk (i32.const 504) (i32.const 2))
        (call $chunk (i32.load (i32.add (local.get $at) (i32.const 12)))
                     (i32.load (i32.add (local.get $at) (i32.const 16)))))))

  ;; the first value of a fields.get result at `slot`, as (ptr, len) into 2048/2052; 0 if there is none
  (func $first (param $slot i32) (result i32)
    (if (i32.eqz (i32.load (i32.add (local.get $slot) (i32.const 4)))) (then (return (i32.const 0))))
    (i32.store (i32.const 2048) (i32.load (i32.load (local.get $slot))))
    (i32.store (i32.const 2052) (i32.load (i32.add (i32.load (local.get $slot)) (i32.const 4))))
    (i32.const 1))

  ;; the answer: `status`, the chunks as its body; the upstream's status and x-origin values when it is its
  (func $respond (param $out i32) (param $status i32)
    (local $headers i32) (local $response i32) (local $body i32) (local $stream i32) (local $i i32) (local $n i32)
    (local $values i32) (local $count i32)
    (local.set $headers (call $fields_new))
    (call $append (local.get $headers) (i32.const 256) (i32.const 7) (i32.const 264) (i32.const 12))
    (if (global.get $upstream_status)
      (then
        (local.set $n (call $decimal (global.get $upstream_status)))
        (call $append (local.get $headers) (i32.const 344) (i32.const 17) (i32.sub (i32.const 2156) (local.get $n))
                      (local.get $n))
        (local.set $values (i32.load (i32.const 2112)))
        (local.set $count (i32.load (i32.const 2116)))
        (block $copied
          (loop $copy
            (br_if $copied (i32.eq (local.get $i) (local.get $count)))
            (call $append (local.get $headers) (i32.const 368) (i32.const 17)
                          (i32.load (i32.add (local.get $values) (i32.shl (local.get $i) (i32.const 3))))
                          (i32.load (i32.add (local.get $values) (i32.add (i32.shl (local.get $i) (i32.const 3))
                                                                          (i32.const 4)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $copy))))
      (else
        (call $append (local.get $headers) (i32.const 400) (i32.const 12) (i32.const 416) (i32.const 25))))
    (local.set $response (call $response_new (local.get $headers)))
    (if (call $response_set_status (local.get $response) (local.get $status)) (then unreachable))
    (call $response_body (local.get $response) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $body (i32.load (i32.const 2052)))
    (call $outparam_set (local.get $out) (i32.const 0) (local.get $response)
                        (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $out_body_write (local.get $body) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable))
    (local.set $stream (i32.load (i32.const 2052)))
    (local.set $i (i32.const 0))
    (block $written
      (loop $next
        (br_if $written (i32.eq (local.get $i) (global.get $chunks)))
        (call $write (local.get $stream)
                     (i32.load (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 3))))
                     (i32.load (i32.add (i32.const 4100) (i32.shl (local.get $i) (i32.const 3)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $out_stream_drop (local.get $stream))
    (call $out_body_finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 2048))
    (if (i32.load8_u (i32.const 2048)) (then unreachable)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $out i32)
    (local $in_headers i32) (local $probe_headers i32) (local $oreq i32) (local $options i32) (local $has_options i32)
    (local $ms i64) (local $p i32) (local $end i32) (local $future i32) (local $pollable i32)
    (local $response i32) (local $upstream_headers i32) (local $in_body i32) (local $in_stream i32) (local $n i32)

    ;; the target, from the request's headers (lowered into this memory: they outlive the headers)
    (local.set $in_headers (call $req_headers (local.get $request)))
    (call $fields_get (local.get $in_headers) (i32.const 280) (i32.const 18) (i32.const 2064))
    (call $fields_get (local.get $in_headers) (i32.const 304) (i32.const 13) (i32.const 2080))
    (call $fields_get (local.get $in_headers) (i32.const 320) (i32.const 12) (i32.const 2096))
    (call $fields_drop (local.get $in_headers))
    (call $request_drop (local.get $request))

    ;; GET http://AUTHORITY PATH, with x-probe
    (local.set $probe_headers (call $fields_new))
    (call $append (local.get $probe_headers) (i32.const 336) (i32.const 7) (i32.const 264) (i32.const 12))
    (local.set $oreq (call $oreq_new (local.get $probe_headers)))
    (if (call $oreq_set_scheme (local.get $oreq) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0))
      (then unreachable))
    (if (call $first (i32.const 2064))
      (then
        (if (call $oreq_set_authority (local.get $oreq) (i32.const 1) (i32.load (i32.const 2048))
                                      (i32.load (i32.const 2052)))
          (then
            (call $oreq_drop (local.get $oreq))
            (call $chunk (i32.const 448) (i32.const 23))
            (call $respond (local.get $out) (i32.const 400))
            (return)))))
    (if (call $first (i32.const 2080))
      (then
        (if (call $oreq_set_path (local.get $oreq) (i32.const 1) (i32.load (i32.const 2048))
                                 (i32.load (i32.const 2052)))
          (then
            (call $oreq_drop (local.get $oreq))
            (call $chunk (i32.const 480) (i32.const 18))
            (call $respond (local.get $out) (i32.const 400))
            (return)))))

    ;; x-timeout-ms: a first-byte timeout, in nanoseconds
    (if (call $first (i32.const 2096))
      (then
        (local.set $p (i32.load (i32.const 2048)))
        (local.set $end (i32.add (local.get $p) (i32.load (i32.const 2052))))
        (block $parsed
          (loop $digit
            (br_if $parsed (i32.eq (local.get $p) (local.get $end)))
            (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10))
                                    (i64.extend_i32_u (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $digit)))
        (local.set $options (call $options_new))
        (local.set $has_options (i32.const 1))
        (if (call $options_set_first_byte (local.get $options) (i32.const 1)
                                          (i64.mul (local.get $ms) (i64.const 1000000)))
          (then unreachable))))

    ;; the call: handle consumes the request and the options, whatever it answers
    (call $handle (local.get $oreq) (local.get $has_options) (local.get $options) (i32.const 3072))
    (if (i32.load8_u (i32.const 3072))
      (then
        (call $error_body (i32.const 3080))
        (call $respond (local.get $out) (i32.const 502))
        (return)))
    (local.set $future (i32.load (i32.const 3080)))

    ;; wait for it (the pollable is the future's child: it goes first), then take its answer
    (local.set $pollable (call $future_subscribe (local.get $future)))
    (call $block (local.get $pollable))
    (call $pollable_drop (local.get $pollable))
    (call $future_get (local.get $future) (i32.const 3072))
    (if (i32.eqz (i32.load8_u (i32.const 3072))) (then unreachable))  ;; none: not ready after block
    (if (i32.load8_u (i32.const 3080)) (then unreachable))              ;; err: taken twice
    (call $future_drop (local.get $future))
    (if (i32.load8_u (i32.const 3088))
      (then
        (call $error_body (i32.const 3096))
        (call $respond (local.get $out) (i32.const 502))
        (return)))
    (local.set $response (i32.load (i32.const 3096)))

    ;; the upstream's answer: its status, its x-origin values, its body read to its end
    (global.set $upstream_status (call $resp_status (local.get $response)))
    (local.set $upstream_headers (call $resp_headers (local.get $response)))
    (call $fields_get (local.get $upstream_headers) (i32.const 392) (i32.const 8) (i32.const 2112))
    (call $fields_drop (local.get $upstream_headers))
    (call $resp_consume (local.get $response) (i32.const 2048))
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
            unreachable))  ;; last-operation-failed: the upstream's body broke
        (call $chunk (i32.load (i32.const 2052)) (i32.load (i32.const 2056)))
        (br $read)))
    (call $in_stream_drop (local.get $in_stream))
    (call $body_drop (local.get $in_body))
    (call $resp_drop (local.get $response))
    (call $respond (local.get $out) (global.get $upstream_status)))
)
