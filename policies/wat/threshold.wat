;; threshold: a policy written by hand in WebAssembly text (ABI v3).
;;
;; Decision table:
;;   kernel mode (el != 0)                          -> sync
;;   user mode, can reschedule, runnable > 0 and
;;     the engine's fetch estimate >= 50 us         -> async, reschedule
;;   any other user-mode fault                      -> async, halt
;; Async decisions use the RFCv2 transport (data abort, exception ready, host
;; initiation). Each call reads its input record with `apf.input` (the
;; offsets are those of `apflab_abi::policy::record`). It counts decisions and
;; completions in its memory and logs one line at the end of the run.
(module
  (import "apf" "input" (func $input (param i32 i32) (result i32)))
  (import "apf" "log_at" (func $log_at (param i32 i32 i32)))
  (memory (export "memory") 1)
  ;; 0: decisions (i64), 8: completions (i64), 64: the input record (72
  ;; bytes), 256: the log line
  (data (i32.const 256) "threshold: run ended")

  (func (export "apf_abi_version") (result i32)
    i32.const 3)

  (func (export "apf_decide") (result i64)
    (drop (call $input (i32.const 64) (i32.const 72)))
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    ;; el at offset 12
    (if (i32.ne (i32.load (i32.const 76)) (i32.const 0))
      (then (return (i64.const 0))))      ;; sync
    ;; can_reschedule at 36, runnable at 40, est_fetch_ns at 56
    (if (i32.and
          (i32.and (i32.ne (i32.load (i32.const 100)) (i32.const 0))
                   (i32.gt_u (i32.load (i32.const 104)) (i32.const 0)))
          (i64.ge_u (i64.load (i32.const 120)) (i64.const 50000)))
      (then (return (i64.const 3))))      ;; ASYNC | RESCHEDULE
    (i64.const 1))                        ;; ASYNC, halt

  (func (export "apf_on_complete")
    (i64.store (i32.const 8) (i64.add (i64.load (i32.const 8)) (i64.const 1))))

  (func (export "apf_on_run_end")
    ;; level 3: info
    (call $log_at (i32.const 3) (i32.const 256) (i32.const 20))))
