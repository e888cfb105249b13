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
 * uc_icount_enable: the block prologue. One test of the budget, which an
 * exit request also makes 0 or less (cpu_exit holds it), then the block's
 * length off the budget and a 32-bit store of its TB's place in the code
 * buffer. QEMU's icount prologue tests one word the same way. The budget
 * is loaded again after the test rather than kept in a local temp, which
 * TCG would spill to the stack across the branch. The length is a
 * placeholder until gen_tb_end knows it.
 */
static inline void gen_uc_icount_start(TCGContext *tcg_ctx, TranslationBlock *tb)
{
    TCGv_i64 budget = tcg_temp_new_i64(tcg_ctx);
    TCGv_i64 len = tcg_temp_new_i64(tcg_ctx);
    TCGv_i32 block = tcg_temp_new_i32(tcg_ctx);
    TCGLabel *exit = gen_new_label(tcg_ctx);
    uintptr_t offset = (uintptr_t)tb - (uintptr_t)tcg_ctx->code_gen_buffer;
    UcIcount *c = tcg_ctx->uc->cpu->uc_icount_ptr;

    /* TBs live in the code buffer, which is at most 1 GiB (uc_open). */
    if (offset >= UINT32_MAX) {
        abort();
    }
    c->tb_base = tcg_ctx->code_gen_buffer;
    tcg_ctx->uc_icount_exit_label = exit;
    tcg_gen_ld_i64(tcg_ctx, budget, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.budget) -
                   offsetof(ArchCPU, env));
    tcg_gen_brcondi_i64(tcg_ctx, TCG_COND_LE, budget, 0, exit);
    tcg_gen_ld_i64(tcg_ctx, budget, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.budget) -
                   offsetof(ArchCPU, env));
    tcg_gen_movi_i64(tcg_ctx, len, 0xdeadbeef);
    tcg_ctx->uc_icount_len_insn = tcg_last_op(tcg_ctx);
    tcg_gen_sub_i64(tcg_ctx, budget, budget, len);
    tcg_gen_st_i64(tcg_ctx, budget, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.budget) -
                   offsetof(ArchCPU, env));
    tcg_gen_movi_i32(tcg_ctx, block, (uint32_t)(offset + 1));
    tcg_gen_st_i32(tcg_ctx, block, tcg_ctx->cpu_env,
                   offsetof(ArchCPU, neg.uc_icount.block_tb) -
                   offsetof(ArchCPU, env));
    tcg_temp_free_i32(tcg_ctx, block);
    tcg_temp_free_i64(tcg_ctx, len);
    tcg_temp_free_i64(tcg_ctx, budget);
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
