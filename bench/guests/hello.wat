;; The benchmark guest: hello-wat without its log call, so no peer pays for a host call.
;; It answers every request with 200 "hello from isolate" and makes no host calls.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))

  ;; msgpack {"status": 200, "headers": [["content-type", "text/plain"]], "body": "hello from isolate\n"}
  (data (i32.const 1024)
    "\83\a6status\cc\c8\a7headers\91\92\accontent-type\aatext/plain\a4body\b3hello from isolate\0a")

  ;; Declares ABI v1; the host checks this export at deploy time.
  (func (export "isolate_abi_v1"))

  ;; A bump allocator: the host asks for room for the request envelope. Grows memory when needed.
  (func (export "isolate_alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16)) (i32.const 1))
                                    (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))

  ;; The handler gets the request envelope and returns (ptr << 32) | len of the response envelope.
  (func (export "isolate_handle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const 69)))
)
