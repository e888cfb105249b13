;; threshold: a policy written by hand in WebAssembly text (ABI v2).
;;
;; Decision table:
;;   kernel mode (el != 0)                          -> sync, prefetch 4 neighbours
;;   user mode, can reschedule, runnable > 0 and
;;     the store's fetch estimate >= 50 us          -> async, reschedule
;;   any other user-mode fault                      -> async, halt
;; Async decisions use the RFCv2 transport (data abort, exception ready, host
;; initiation). It counts decisions and ready notifications in its memory and
;; logs one line at the end of the run.
(module
  (import "apf" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  ;; 0: decisions (i64), 8: ready notifications (i64), 16: the log line
  (data (i32.const 16) "threshold: run ended")

  (func (export "apf_abi_version") (result i32)
    i32.const 2)

  (func (export "apf_decide")
    (param $vcpu i32) (param $ipa i64) (param $el i32) (param $can_reschedule i32)
    (param $runnable i32) (param $outstanding i32) (param $now_ns i64)
    (param $est_fetch_ns i64) (result i64)
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (if (i32.ne (local.get $el) (i32.const 0))
      (then (return (i64.const 0x400))))  ;; sync, prefetch 4 (bits 8..12)
    (if (i32.and
          (i32.and (i32.ne (local.get $can_reschedule) (i32.const 0))
                   (i32.gt_u (local.get $runnable) (i32.const 0)))
          (i64.ge_u (local.get $est_fetch_ns) (i64.const 50000)))
      (then (return (i64.const 3))))      ;; ASYNC | RESCHEDULE
    (i64.const 1))                        ;; ASYNC, halt

  (func (export "apf_on_ready") (param $token i64) (param $latency_ns i64)
    (i64.store (i32.const 8) (i64.add (i64.load (i32.const 8)) (i64.const 1))))

  (func (export "apf_on_run_end")
    (call $log (i32.const 16) (i32.const 20))))
