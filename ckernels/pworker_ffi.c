/*
 * pworker_ffi.c: pworker_read and pworker_update as XLA FFI handlers, so a
 * jitted loop can run whole training steps (asgd/executors/compiled.py).
 *
 * Both are registered as side-effecting custom calls; XLA orders them by data
 * dependence only: read -> (gradient) -> update -> the next read, each taking
 * the previous one's small output as an operand. The worker context arrives
 * as an operand too (its address in a uint32[2] buffer), so one compiled loop
 * serves every run without recompiling.
 *
 *   asgd_worker_read    operands: ctx u32[2], token (any)
 *                       results:  params f32[d], meta i32[4]
 *   asgd_worker_update  operands: ctx u32[2], meta i32[4], loss f32[],
 *                                 gradient leaves f32[...] (in the flat layout's order)
 *                       results:  status i32[4]
 *   asgd_worker_begin   operands: ctx u32[2], meta i32[4], loss f32[]
 *                       results:  base f32[d], scale f32[], ameta i32[4]
 *   asgd_worker_commit  operands: ctx u32[2], ameta i32[4], new-vector leaves f32[...]
 *                       results:  base f32[d], scale f32[], ameta i32[4]
 * (begin/commit: a stateful update, e.g. an optimizer's, see pworker.h)
 *
 * Written against XLA's C API (xla/ffi/api/c_api.h, shipped with jaxlib) so
 * the kernel stays C: a handler answers the metadata query with the header's
 * API version, ignores the non-execute stages, and checks every buffer's
 * type and size before touching it.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pworker.h"
#include "xla/ffi/api/c_api.h"

#define MAX_LEAVES 1024

static XLA_FFI_Error *fail(const XLA_FFI_Api *api, XLA_FFI_Error_Code code, const char *msg) {
    XLA_FFI_Error_Create_Args args;
    memset(&args, 0, sizeof args);
    args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
    args.message = msg;
    args.errc = code;
    return api->XLA_FFI_Error_Create(&args);
}

/* 1 if the call was the metadata query (answered), 0 for a real call. */
static int answer_metadata(XLA_FFI_CallFrame *frame) {
    XLA_FFI_Extension_Base *ext = frame->extension_start;
    if (!ext || ext->type != XLA_FFI_Extension_Metadata) return 0;
    XLA_FFI_Metadata *md = ((XLA_FFI_Metadata_Extension *)ext)->metadata;
    md->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
    md->api_version.extension_start = NULL;
    md->api_version.major_version = XLA_FFI_API_MAJOR;
    md->api_version.minor_version = XLA_FFI_API_MINOR;
    md->traits = 0;
    return 1;
}

static int64_t elements(const XLA_FFI_Buffer *b) {
    int64_t n = 1;
    for (int64_t i = 0; i < b->rank; i++) n *= b->dims[i];
    return n;
}

static XLA_FFI_Buffer *checked(XLA_FFI_Buffer *b, XLA_FFI_DataType dtype, int64_t n) {
    if (b->dtype != dtype || (n >= 0 && elements(b) != n)) return NULL;
    return b;
}

/* Operand i, if it is a buffer of `dtype` with n elements (n < 0: any number). */
static XLA_FFI_Buffer *arg(XLA_FFI_Args *args, int64_t i, XLA_FFI_DataType dtype, int64_t n) {
    if (i >= args->size || args->types[i] != XLA_FFI_ArgType_BUFFER) return NULL;
    return checked((XLA_FFI_Buffer *)args->args[i], dtype, n);
}

/* Result i, likewise. */
static XLA_FFI_Buffer *ret(XLA_FFI_Rets *rets, int64_t i, XLA_FFI_DataType dtype, int64_t n) {
    if (i >= rets->size || rets->types[i] != XLA_FFI_RetType_BUFFER) return NULL;
    return checked((XLA_FFI_Buffer *)rets->rets[i], dtype, n);
}

static pworker *context(XLA_FFI_Buffer *ctx) {
    uint64_t address;
    memcpy(&address, ctx->data, sizeof address);
    return (pworker *)(uintptr_t)address;
}

static XLA_FFI_Error *store_error(const XLA_FFI_Api *api, const char *what, int rc) {
    static _Thread_local char msg[160];
    snprintf(msg, sizeof msg, "%s: %s", what, pstore_strerror(rc));
    return fail(api, rc == PSTORE_ECLOSED ? XLA_FFI_Error_Code_CANCELLED
                                          : XLA_FFI_Error_Code_INTERNAL, msg);
}

/* Collect operands first..size-1 as segments; 0 if they are all float32. */
static int segments(XLA_FFI_Args *in, int64_t first, float **segs, int64_t *lens) {
    for (int64_t k = first; k < in->size; k++) {
        XLA_FFI_Buffer *leaf = arg(in, k, XLA_FFI_DataType_F32, -1);
        if (!leaf) return -1;
        segs[k - first] = (float *)leaf->data;
        lens[k - first] = elements(leaf);
    }
    return 0;
}

static XLA_FFI_Error *read_handler(XLA_FFI_CallFrame *frame) {
    if (answer_metadata(frame)) return NULL;
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
    const XLA_FFI_Api *api = frame->api;
    XLA_FFI_Buffer *ctx = arg(&frame->args, 0, XLA_FFI_DataType_U32, 2);
    XLA_FFI_Buffer *meta = ret(&frame->rets, 1, XLA_FFI_DataType_S32, 4);
    if (!ctx || !meta || frame->rets.size != 2)
        return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "asgd_worker_read: bad operands");
    pworker *w = context(ctx);
    XLA_FFI_Buffer *params = ret(&frame->rets, 0, XLA_FFI_DataType_F32, pworker_read_count(w));
    if (!params)
        return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                    "asgd_worker_read: params must be float32[n] of the worker's read count");
    int rc = pworker_read(w, (float *)params->data, (int32_t *)meta->data);
    return rc ? store_error(api, "asgd_worker_read", rc) : NULL;
}

static XLA_FFI_Error *update_handler(XLA_FFI_CallFrame *frame) {
    if (answer_metadata(frame)) return NULL;
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
    const XLA_FFI_Api *api = frame->api;
    XLA_FFI_Args *in = &frame->args;
    XLA_FFI_Buffer *ctx = arg(in, 0, XLA_FFI_DataType_U32, 2);
    XLA_FFI_Buffer *meta = arg(in, 1, XLA_FFI_DataType_S32, 4);
    XLA_FFI_Buffer *loss = arg(in, 2, XLA_FFI_DataType_F32, 1);
    XLA_FFI_Buffer *status = ret(&frame->rets, 0, XLA_FFI_DataType_S32, 4);
    int64_t nseg = in->size - 3;
    float *segs[MAX_LEAVES];
    int64_t lens[MAX_LEAVES];
    if (!ctx || !meta || !loss || !status || nseg < 1 || nseg > MAX_LEAVES ||
        segments(in, 3, segs, lens))
        return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "asgd_worker_update: bad operands");
    int rc = pworker_update(context(ctx), (const int32_t *)meta->data, *(const float *)loss->data,
                            segs, lens, (int32_t)nseg, (int32_t *)status->data);
    return rc ? store_error(api, "asgd_worker_update", rc) : NULL;
}

/* The three results of begin and commit: base f32[d], scale f32[], ameta i32[4]. */
static int attempt_results(XLA_FFI_Rets *out, pworker *w, XLA_FFI_Buffer **base,
                           XLA_FFI_Buffer **scale, XLA_FFI_Buffer **ameta) {
    *base = ret(out, 0, XLA_FFI_DataType_F32, pworker_dim(w));
    *scale = ret(out, 1, XLA_FFI_DataType_F32, 1);
    *ameta = ret(out, 2, XLA_FFI_DataType_S32, 4);
    return out->size == 3 && *base && *scale && *ameta ? 0 : -1;
}

static XLA_FFI_Error *begin_handler(XLA_FFI_CallFrame *frame) {
    if (answer_metadata(frame)) return NULL;
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
    const XLA_FFI_Api *api = frame->api;
    XLA_FFI_Buffer *ctx = arg(&frame->args, 0, XLA_FFI_DataType_U32, 2);
    XLA_FFI_Buffer *meta = arg(&frame->args, 1, XLA_FFI_DataType_S32, 4);
    XLA_FFI_Buffer *loss = arg(&frame->args, 2, XLA_FFI_DataType_F32, 1);
    XLA_FFI_Buffer *base, *scale, *ameta;
    if (!ctx || !meta || !loss || attempt_results(&frame->rets, context(ctx), &base, &scale, &ameta))
        return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "asgd_worker_begin: bad operands");
    int rc = pworker_begin(context(ctx), (const int32_t *)meta->data, *(const float *)loss->data,
                           (float *)base->data, (float *)scale->data, (int32_t *)ameta->data);
    return rc ? store_error(api, "asgd_worker_begin", rc) : NULL;
}

static XLA_FFI_Error *commit_handler(XLA_FFI_CallFrame *frame) {
    if (answer_metadata(frame)) return NULL;
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
    const XLA_FFI_Api *api = frame->api;
    XLA_FFI_Args *in = &frame->args;
    XLA_FFI_Buffer *ctx = arg(in, 0, XLA_FFI_DataType_U32, 2);
    XLA_FFI_Buffer *meta = arg(in, 1, XLA_FFI_DataType_S32, 4);
    XLA_FFI_Buffer *base, *scale, *ameta;
    int64_t nseg = in->size - 2;
    float *segs[MAX_LEAVES];
    int64_t lens[MAX_LEAVES];
    if (!ctx || !meta || nseg < 1 || nseg > MAX_LEAVES || segments(in, 2, segs, lens) ||
        attempt_results(&frame->rets, context(ctx), &base, &scale, &ameta))
        return fail(api, XLA_FFI_Error_Code_INVALID_ARGUMENT, "asgd_worker_commit: bad operands");
    memcpy(ameta->data, meta->data, 4 * sizeof(int32_t));
    int rc = pworker_commit(context(ctx), segs, lens, (int32_t)nseg, (float *)base->data,
                            (float *)scale->data, (int32_t *)ameta->data);
    return rc ? store_error(api, "asgd_worker_commit", rc) : NULL;
}

void *pworker_ffi_read_handler(void) { return (void *)read_handler; }
void *pworker_ffi_begin_handler(void) { return (void *)begin_handler; }
void *pworker_ffi_commit_handler(void) { return (void *)commit_handler; }
void *pworker_ffi_update_handler(void) { return (void *)update_handler; }
