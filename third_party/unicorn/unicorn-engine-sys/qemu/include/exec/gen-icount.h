#ifndef GEN_ICOUNT_H
#define GEN_ICOUNT_H

#include "qemu/timer.h"

/* Helpers for instruction counting code generation.  */

static inline void gen_io_start(TCGContext *tcg_ctx)
{
    TCGv_i32 tmp = tcg_const_i32(tcg_ctx, 1);
    tcg_gen_st_i32(tcg_ctx, tmp, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, parent_obj.can_do_io) -
                   offsetof(ArchCPU, env));
    tcg_temp_free_i32(tcg_ctx, tmp);
}

/*
 * cpu->can_do_io is cleared automatically at the beginning of
 * each translation block.  The cost is minimal and only paid
 * for -icount, plus it would be very easy to forget doing it
 * in the translator.  Therefore, backends only need to call
 * gen_io_start.
 */
static inline void gen_io_end(TCGContext *tcg_ctx)
{
    TCGv_i32 tmp = tcg_const_i32(tcg_ctx, 0);
    tcg_gen_st_i32(tcg_ctx, tmp, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, parent_obj.can_do_io) -
                   offsetof(ArchCPU, env));
    tcg_temp_free_i32(tcg_ctx, tmp);
}

/*
 * uc_icount_enable: QEMU's own block prologue (an inline test of the exit
 * request, no helper call) plus the instruction budget. The length and end
 * of the block are placeholders until gen_tb_end knows them.
 */
static inline void gen_uc_icount_start(TCGContext *tcg_ctx, TranslationBlock *tb)
{
    TCGv_i32 req = tcg_temp_new_i32(tcg_ctx);
    /* Lives across the branch: a local temp (as QEMU's icount count). */
    TCGv_i64 budget = tcg_temp_local_new_i64(tcg_ctx);
    TCGv_i64 v = tcg_temp_new_i64(tcg_ctx);
    TCGLabel *exit = gen_new_label(tcg_ctx);

    tcg_ctx->uc_icount_exit_label = exit;
    tcg_gen_ld_i32(tcg_ctx, req, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.icount_decr.u32) -
                   offsetof(ArchCPU, env));
    tcg_gen_brcondi_i32(tcg_ctx, TCG_COND_LT, req, 0, exit);
    tcg_gen_ld_i64(tcg_ctx, budget, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.budget) -
                   offsetof(ArchCPU, env));
    tcg_gen_brcondi_i64(tcg_ctx, TCG_COND_LE, budget, 0, exit);
    tcg_gen_movi_i64(tcg_ctx, v, 0xdeadbeef);
    tcg_ctx->uc_icount_len_insn = tcg_last_op(tcg_ctx);
    tcg_gen_sub_i64(tcg_ctx, budget, budget, v);
    tcg_gen_st_i64(tcg_ctx, budget, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.budget) -
                   offsetof(ArchCPU, env));
    tcg_gen_movi_i64(tcg_ctx, v, tb->pc);
    tcg_gen_st_i64(tcg_ctx, v, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.block_start) -
                   offsetof(ArchCPU, env));
    tcg_gen_movi_i64(tcg_ctx, v, 0xdeadbeef);
    tcg_ctx->uc_icount_end_insn = tcg_last_op(tcg_ctx);
    tcg_gen_st_i64(tcg_ctx, v, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.block_end) -
                   offsetof(ArchCPU, env));
    tcg_temp_free_i64(tcg_ctx, v);
    tcg_temp_free_i64(tcg_ctx, budget);
    tcg_temp_free_i32(tcg_ctx, req);
}

static inline void gen_tb_start(TCGContext *tcg_ctx, TranslationBlock *tb)
{
    if (tcg_ctx->uc->icount_enabled) {
        gen_uc_icount_start(tcg_ctx, tb);
        return;
    }

    TCGv_ptr puc = tcg_const_ptr(tcg_ctx, tcg_ctx->uc);
    TCGv_i32 tmp = tcg_const_i32(tcg_ctx, 0);
    // Unicorn:
    //    We CANT'T use brcondi_i32 here or we will fail liveness analysis
    //    because it marks the end of BB
    if (tcg_ctx->delay_slot_flag != NULL) {
        tcg_gen_mov_i32(tcg_ctx, tmp, tcg_ctx->delay_slot_flag);
    }
    gen_helper_check_exit_request(tcg_ctx, puc, tmp);
    tcg_temp_free_i32(tcg_ctx, tmp);
    tcg_temp_free_ptr(tcg_ctx, puc);
}

static inline void gen_tb_end(TCGContext *tcg_ctx, TranslationBlock *tb, int num_insns)
{
    if (tcg_ctx->uc->icount_enabled) {
        /* tb->size is not set yet: the end is patched by translator_loop */
        tcg_set_insn_param(tcg_ctx->uc_icount_len_insn, 1, num_insns);
        gen_set_label(tcg_ctx, tcg_ctx->uc_icount_exit_label);
    }
    if (tcg_ctx->delay_slot_flag != NULL){
        tcg_temp_free_i32(tcg_ctx, tcg_ctx->delay_slot_flag);
    }
    tcg_ctx->delay_slot_flag = NULL;
    if (tb_cflags(tb) & CF_USE_ICOUNT) {
        /* Update the num_insn immediate parameter now that we know
         * the actual insn count.  */
        tcg_set_insn_param(tcg_ctx->icount_start_insn, 1, num_insns);
    }

    tcg_gen_exit_tb(tcg_ctx, tb, TB_EXIT_REQUESTED);
}

#endif
