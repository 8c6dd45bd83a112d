/*
 * The event loop of llmservingsim (engine.py) for the common configuration, in C.
 *
 * What it covers (native/runner.py checks it before choosing this loop): pools of instances
 * (mixed, or prefill and decode pools with KV transfers between them; pipeline parallelism as
 * vLLM's virtual engines), routed by any built-in router (prefix_aware asked in Python, on the
 * loads the loop publishes to the cluster's load board), each instance running the vllm
 * (sarathi), orca, no_evict or static scheduler (serving/schedulers/) on a paged KV cache,
 * with or without prefix caching (no offload tier), with preemption by recompute or swap
 * (admission control by max_queue and request_timeout_s included), timed by
 * perf/iteration.py's IterationTimer (dense or mixture-of-experts layers, grouped-query or
 * multi-head latent attention) on any backend. Everything else runs the Python engine.
 *
 * It follows the Python engine step by step, one request at a time (engine.fast_forward:
 * false is its model): the same events in the same order, the same scheduling decisions,
 * the same floating-point operations in the same order, so every simulated time is the
 * same number. tests/test_compiled_loop.py checks that on many configurations.
 *
 * Costs the timer memoizes (a layer by token count, the model head by token and sample
 * count, prefill attention by chunk) are asked of each pool's Python timer once per key
 * through callbacks and remembered here (so are MLA's weight-absorption GEMMs around decode
 * attention, by batch size); decode attention itself, which changes every step, is computed
 * here with the formula of OpGraph.decode_attention_work (MlaOps.decode_attention_work) and
 * RooflineBackend.decode_attention_time on the roofline backend, and asked of the timer every
 * step on any other. A KV transfer's time comes from a callback too
 * (Cluster.kv_transfer_time).
 *
 * Requests: the caller hands over ids, arrival times and lengths in arrival order; a
 * request's number below is its row. Ended requests, steps and inter-token gaps are written to
 * byte buffers that the caller takes (and empties) between calls of Loop.run, which stops
 * after a given number of steps so the caller can flush outputs, report progress and notice
 * a stop signal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KERNEL_VERSION 8

/* Request row status codes (metrics/request_log.py STATUSES). */
#define STATUS_FINISHED 0
#define STATUS_FAILED 1
#define STATUS_REJECTED 2
#define STATUS_TIMED_OUT 3

#define ROLE_MIXED 0
#define ROLE_PREFILL 1
#define ROLE_DECODE 2

#define ATTENTION_GQA 0   /* the roofline's formula for grouped-query attention */
#define ATTENTION_MLA 1   /* the roofline's formula for latent attention, kernels around it */
#define ATTENTION_OPS 2   /* any other backend: its kernels' costs asked every step */
/* Kernels before plus after MLA's decode attention, at most. */
#define MAX_AROUND 8

/* Scheduler policies (serving/schedulers/). */
#define POLICY_VLLM 0
#define POLICY_ORCA 1
#define POLICY_NO_EVICT 2
#define POLICY_STATIC 3

#define ROUTER_ROUND_ROBIN 0
#define ROUTER_LEAST_OUTSTANDING 1
#define ROUTER_LEAST_KV 2
#define ROUTER_RANDOM 3
#define ROUTER_POWER_OF_TWO 4
#define ROUTER_PYTHON 5 /* the Python router itself (prefix_aware): draw(request) -> instance */

/* Event kinds, in engine.py's order for events at the same time. */
#define EVENT_STEP_END 0
#define EVENT_WAKE 1
#define EVENT_KV_ARRIVAL 2

/* ------------------------------------------------------------------ growable byte buffer */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buffer;

static int buffer_reserve(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buffer_put(Buffer *b, const void *src, Py_ssize_t size) {
    if (buffer_reserve(b, size) < 0) return -1;
    memcpy(b->data + b->len, src, (size_t)size);
    b->len += size;
    return 0;
}

static PyObject *buffer_take(Buffer *b) {
    PyObject *out = PyBytes_FromStringAndSize(b->data, b->len);
    b->len = 0;
    return out;
}

/* ------------------------------------------------------------------ rows written */

/* An ended request (the caller adds arrival and lengths from its own columns). */
typedef struct {
    int64_t request;
    double first_scheduled_s, first_token_s, finish_s, kv_transfer_s;
    int64_t generated, cached_tokens;
    int32_t instance, status, preemptions, prefill_instance;
} EndedRow;

/* metrics/steps.py _ROW: instance, engine, start, duration, seqs, prefill, decode, kv used,
 * kv total, waiting, power. */
typedef struct {
    int64_t instance, engine;
    double start_s, duration_s;
    int64_t num_seqs, prefill_tokens, decode_tokens, kv_used, kv_total, waiting;
    double power_w;
} StepRow;

/* One (gap, count) run of inter-token gaps (metrics/samples.py RepeatedSamples.add). */
typedef struct {
    double gap;
    int64_t count;
} GapRun;

/* ------------------------------------------------------------------ cost memo */

typedef struct {
    double seconds, flops, bytes;
} Cost;

/* Open addressing, int64 keys >= 0 (-1 marks an empty slot). */
typedef struct {
    int64_t *keys;
    Cost *values;
    Py_ssize_t cap, used;
} CostMap;

static int costmap_init(CostMap *m, Py_ssize_t cap) {
    m->keys = malloc(sizeof(int64_t) * (size_t)cap);
    m->values = malloc(sizeof(Cost) * (size_t)cap);
    if (m->keys == NULL || m->values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cap; i++) m->keys[i] = -1;
    m->cap = cap;
    m->used = 0;
    return 0;
}

static void costmap_free(CostMap *m) {
    free(m->keys);
    free(m->values);
    m->keys = NULL;
    m->values = NULL;
}

static Py_ssize_t costmap_slot(const CostMap *m, int64_t key) {
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ULL;
    Py_ssize_t i = (Py_ssize_t)(h >> 20) & (m->cap - 1);
    while (m->keys[i] != -1 && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
    return i;
}

static const Cost *costmap_get(const CostMap *m, int64_t key) {
    Py_ssize_t i = costmap_slot(m, key);
    return m->keys[i] == key ? &m->values[i] : NULL;
}

static int costmap_put(CostMap *m, int64_t key, Cost value) {
    if (2 * (m->used + 1) > m->cap) {
        CostMap grown;
        if (costmap_init(&grown, 2 * m->cap) < 0) return -1;
        for (Py_ssize_t i = 0; i < m->cap; i++) {
            if (m->keys[i] != -1) {
                Py_ssize_t j = costmap_slot(&grown, m->keys[i]);
                grown.keys[j] = m->keys[i];
                grown.values[j] = m->values[i];
                grown.used++;
            }
        }
        costmap_free(m);
        *m = grown;
    }
    Py_ssize_t i = costmap_slot(m, key);
    if (m->keys[i] == -1) m->used++;
    m->keys[i] = key;
    m->values[i] = value;
    return 0;
}

/* ------------------------------------------------------------------ prefix cache structures */

/* Open addressing on (a, b) pairs of int64, a value >= 0 each; deletions shift back. */
typedef struct {
    int64_t a, b, value;
} PairEntry;

typedef struct {
    PairEntry *slots;
    Py_ssize_t cap, used;
} PairMap;

#define PAIR_EMPTY INT64_MIN

static int pairmap_init(PairMap *m, Py_ssize_t cap) {
    m->slots = malloc(sizeof(PairEntry) * (size_t)cap);
    if (m->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cap; i++) m->slots[i].a = PAIR_EMPTY;
    m->cap = cap;
    m->used = 0;
    return 0;
}

static Py_ssize_t pair_home(const PairMap *m, int64_t a, int64_t b) {
    uint64_t h = ((uint64_t)a * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)b * 0xC2B2AE3D27D4EB4FULL);
    h ^= h >> 29;
    return (Py_ssize_t)(h & (uint64_t)(m->cap - 1));
}

static Py_ssize_t pair_find(const PairMap *m, int64_t a, int64_t b) {
    Py_ssize_t i = pair_home(m, a, b);
    while (m->slots[i].a != PAIR_EMPTY && (m->slots[i].a != a || m->slots[i].b != b))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int64_t pairmap_get(const PairMap *m, int64_t a, int64_t b) {
    Py_ssize_t i = pair_find(m, a, b);
    return m->slots[i].a == PAIR_EMPTY ? -1 : m->slots[i].value;
}

static int pairmap_put(PairMap *m, int64_t a, int64_t b, int64_t value) {
    if (2 * (m->used + 1) > m->cap) {
        PairMap grown;
        if (pairmap_init(&grown, 2 * m->cap) < 0) return -1;
        for (Py_ssize_t i = 0; i < m->cap; i++)
            if (m->slots[i].a != PAIR_EMPTY)
                grown.slots[pair_find(&grown, m->slots[i].a, m->slots[i].b)] = m->slots[i];
        grown.used = m->used;
        free(m->slots);
        *m = grown;
    }
    Py_ssize_t i = pair_find(m, a, b);
    if (m->slots[i].a == PAIR_EMPTY) m->used++;
    m->slots[i].a = a;
    m->slots[i].b = b;
    m->slots[i].value = value;
    return 0;
}

static void pairmap_del(PairMap *m, int64_t a, int64_t b) {
    Py_ssize_t i = pair_find(m, a, b);
    if (m->slots[i].a == PAIR_EMPTY) return;
    m->slots[i].a = PAIR_EMPTY;
    m->used--;
    /* Shift back the entries after it that probed past it. */
    Py_ssize_t j = i;
    for (;;) {
        j = (j + 1) & (m->cap - 1);
        if (m->slots[j].a == PAIR_EMPTY) return;
        Py_ssize_t home = pair_home(m, m->slots[j].a, m->slots[j].b);
        int between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!between) {
            m->slots[i] = m->slots[j];
            m->slots[j].a = PAIR_EMPTY;
            i = j;
        }
    }
}

/* A cached content node (prefix_cache.py node_info): its key and the device blocks that
 * hold it, in the order they came (the first serves a hit). */
typedef struct {
    int64_t parent, key;
    int64_t *holders;
    Py_ssize_t len, cap;
} NodeInfo;

/* PrefixCachingBlockManager without an offload tier. Block ids are labels: an empty block is
 * any block without content, so the empty ones are handed out from a counter of never-used
 * ids and a stack of returned ones; blocks that hold content and no reference are cached,
 * least recently freed first (a list through prev/next), and evicted in that order. */
typedef struct {
    int64_t num_blocks;
    int64_t *ref, *node; /* per block: references, the node it holds (-1: none) */
    int64_t *prev, *next;
    int64_t head, tail, cached;
    int64_t next_fresh, *returned;
    Py_ssize_t returned_len;
    PairMap node_of; /* (parent, key) -> node */
    PairMap info_of; /* (node, 0) -> index into info */
    NodeInfo *info;
    int64_t *free_info;
    Py_ssize_t info_cap, free_info_len;
    int64_t next_node, evicted;
} PrefixCache;

/* ------------------------------------------------------------------ pools, requests, instances */

/* A pool's instances share one timer (perf/iteration.py) and one device type. */
typedef struct {
    int role;
    int64_t num_blocks;        /* of an instance: its engines' together */
    int64_t engine_blocks;     /* of one virtual engine */
    Py_ssize_t pp;             /* pipeline stages = virtual engines per instance */
    int64_t *stage_layers, *stage_moe_layers;
    PyObject *stage_sends;     /* num_tokens -> each stage's activation send (PP > 1) */
    CostMap sends_memo;        /* key (num_tokens, stage); stage 255 marks a known count */
    /* timer */
    double num_layers, step_overhead, seq_overhead;
    double q_size, kv_size, kv_bytes, act_bytes, decode_flops, bandwidth, launch;
    int attention; /* ATTENTION_GQA or ATTENTION_MLA */
    int64_t mla_heads, mla_latent, mla_kv_lora;
    int64_t num_moe_layers; /* 0: a dense model */
    PyObject *layer_cost, *prefill_cost, *head_cost, *moe_layer_cost, *around_decode;
    PyObject *decode_attention; /* ATTENTION_OPS: (num_seqs, context) -> each kernel's cost */
    CostMap layer_memo, prefill_memo, head_memo, moe_layer_memo;
    CostMap around_memo; /* key (num_seqs, k): k = 0 holds the counts, then the kernels */
    int64_t cache_lookups, cache_hits;
    /* power of one device */
    double tp, peak_flops, mem_bandwidth, idle_w, dynamic_w;
    /* host link of swap copies (HostLink): per direction, one latency plus bytes/bandwidth */
    double link_bandwidth, link_latency_s, block_bytes;
    int64_t swap_blocks; /* swap space of one virtual engine, in blocks (0: no swap) */
} Pool;

/* A request while an instance holds it or its KV cache is on the way (serving/sequence.py). */
typedef struct {
    int64_t request;
    int64_t input_len, output_len;
    int64_t num_computed, generated, blocks;
    int64_t max_computed, pass_start;
    int64_t preemptions, admissions;
    int64_t prefill_instance;
    double first_scheduled_s, first_token_s, last_token_s, kv_transfer_s;
    int64_t cached_tokens; /* prompt tokens the prefix cache supplied at the first admission */
    int64_t swapped_blocks; /* parked in host memory by a swap preemption */
    int leaving; /* set while a step's results are applied: finished or handed off */
    /* Prefix caching only (kept with the slot, reused by its next request): the device
     * blocks held, the cached content of the first full ones, and what every full block of
     * the request's tokens holds (content key ids; the namespace's root is the first
     * parent). */
    struct {
        int64_t *blocks, *nodes, *keys;
        Py_ssize_t blocks_cap, nodes_len, nodes_cap, keys_len, keys_cap;
        int64_t root;
        int keys_state; /* 0: not asked yet, 1: unknown content, 2: keys known */
    } kv;
} Seq;

/* A virtual engine (instance.py VirtualEngine) and its scheduler: without pipeline
 * parallelism an instance has one; with PP = k it has k, each owning 1/k of the KV blocks. */
typedef struct {
    /* waiting: a ring of sequence slots, head first */
    int64_t *waiting;
    Py_ssize_t waiting_cap, waiting_head, waiting_len;
    /* running, in admission order (at most max_num_seqs) */
    int64_t *running;
    Py_ssize_t running_len;
    /* the batch in flight: (slot, tokens) */
    int64_t *batch_slot, *batch_tokens;
    Py_ssize_t batch_len;
    int busy;
    int64_t free_blocks; /* without prefix caching: blocks are counts */
    PrefixCache *pc;     /* with prefix caching, else NULL */
    int64_t outstanding;
    /* swap space (swap.py SwapSpace) and its host link's ledger (host_link.py) */
    int64_t swap_capacity, swap_used, swap_peak;
    int64_t to_device, to_host, pending_to_device, pending_to_host;
    double transfer_s;
    /* scheduler counters */
    int64_t preemptions, recomputed_tokens, swap_fallbacks;
} Engine;

typedef struct {
    Pool *pool;
    Engine *engines;
    double *stage_free; /* when each pipeline stage finishes its current batch */
    Py_ssize_t next_engine;
    double wake_at; /* time of the pending wake-up event, if any */
    int64_t outstanding, incoming;
    Py_ssize_t touched_epoch;
    /* StepTotals */
    int64_t iterations, prefill_tokens, decode_tokens, kv_peak_blocks, max_batch_size;
    double busy_s, busy_device_s, energy_busy_j;
} Inst;

/* engine.py's event tuple (time, kind, instance, arg), plus the transferred sequence. */
typedef struct {
    double time;
    int64_t kind, instance, arg, slot;
} Event;

/* cluster/routers.py: a router over some instances (by global index). The random ones ask
 * the Python router's generator for their draws (`draw`), so the draws are numpy's. */
typedef struct {
    int kind;
    PyObject *draw;
    Py_ssize_t *members;
    Py_ssize_t count, next;
} Router;

typedef struct {
    PyObject_HEAD
    int ready; /* __init__ succeeded */
    int init_called; /* __init__ ran (it takes references before it can fail): once only */
    int started; /* run() was called: no more pools */
    /* scheduler configuration (one for the cluster) */
    int policy;
    int prefix_caching;
    int swap; /* preemption by swap (else by recompute) */
    PyObject *block_keys; /* request -> (root, key ids as bytes) or None (prefix caching) */
    int64_t *hit_nodes, *hit_blocks; /* a lookup's result */
    Py_ssize_t hit_nodes_cap, hit_blocks_cap;
    int64_t block_size, max_num_seqs, max_num_batched_tokens, max_queue;
    double request_timeout_s; /* < 0: none */
    int record_steps;
    PyObject *kv_transfer; /* (source, target, tokens) -> seconds */
    PyObject *board_obj;   /* the cluster's load board (int64 per instance), or None */
    Py_buffer board_view;
    int64_t *board;
    /* requests, in arrival order */
    double *arrival;
    int64_t *ids, *input_len, *output_len;
    Py_ssize_t num_requests, next_request;
    /* sequences: slots reused once a request leaves */
    Seq *seqs;
    int64_t *free_slots;
    Py_ssize_t seqs_cap, free_len;
    /* pools and instances */
    Pool **pools;
    Py_ssize_t num_pools;
    Inst *inst;
    Py_ssize_t num_instances;
    Router entry, decode;
    /* pending events, a min-heap */
    Event *events;
    Py_ssize_t events_len, events_cap;
    Py_ssize_t *touched;
    Py_ssize_t epoch;
    /* scratch for one step: prefill chunks (new, cached), hand-offs, stage times */
    int64_t *chunk_new, *chunk_ctx, *handoffs;
    double *stage_time, *stage_send;
    Py_ssize_t max_pp;
    /* clock and outputs */
    double now;
    int64_t steps;
    Buffer ended, step_rows, gaps;
} Loop;

/* ------------------------------------------------------------------ costs (perf/iteration.py) */

static int ask_cost(PyObject *fn, PyObject *args, Cost *out) {
    if (args == NULL) return -1;
    PyObject *res = PyObject_CallObject(fn, args);
    Py_DECREF(args);
    if (res == NULL) return -1;
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 3) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "a cost callback must return (seconds, flops, bytes)");
        return -1;
    }
    out->seconds = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 0));
    out->flops = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 1));
    out->bytes = PyFloat_AsDouble(PyTuple_GET_ITEM(res, 2));
    Py_DECREF(res);
    return PyErr_Occurred() ? -1 : 0;
}

/* A memoized cost of the pool's timer: a key seen before counts as the timer's lookup and
 * hit (the timer's own memo holds it too); a new key is asked of the timer, which counts that
 * lookup itself. */
static int memo_cost(Pool *P, CostMap *memo, int64_t key, PyObject *fn, int64_t a, int64_t b,
                     int two_args, Cost *out) {
    const Cost *known = costmap_get(memo, key);
    if (known != NULL) {
        P->cache_lookups++;
        P->cache_hits++;
        *out = *known;
        return 0;
    }
    PyObject *args = two_args ? Py_BuildValue("(LL)", (long long)a, (long long)b)
                              : Py_BuildValue("(L)", (long long)a);
    if (ask_cost(fn, args, out) < 0) return -1;
    return costmap_put(memo, key, *out);
}

static int layer_cost(Pool *P, int64_t num_tokens, Cost *out) {
    return memo_cost(P, &P->layer_memo, num_tokens, P->layer_cost, num_tokens, 0, 0, out);
}

static int moe_layer_cost(Pool *P, int64_t num_tokens, Cost *out) {
    return memo_cost(P, &P->moe_layer_memo, num_tokens, P->moe_layer_cost, num_tokens, 0, 0, out);
}

static int head_cost(Pool *P, int64_t num_tokens, int64_t num_sampled, Cost *out) {
    int64_t key = (num_tokens << 32) | num_sampled;
    return memo_cost(P, &P->head_memo, key, P->head_cost, num_tokens, num_sampled, 1, out);
}

static int prefill_cost(Pool *P, int64_t new_tokens, int64_t cached, Cost *out) {
    int64_t key = (new_tokens << 32) | cached;
    return memo_cost(P, &P->prefill_memo, key, P->prefill_cost, new_tokens, cached, 1, out);
}

static int64_t around_key(int64_t num_seqs, int k) { return (num_seqs << 8) | k; }

/* MLA's kernels around decode attention for a batch size (IterationTimer
 * _around_decode_attention, not a counted memo): counts at k = 0, then the kernels. */
static int around_decode(Pool *P, int64_t num_seqs, Cost *ops, int *before, int *after) {
    const Cost *counts = costmap_get(&P->around_memo, around_key(num_seqs, 0));
    if (counts == NULL) {
        PyObject *res = PyObject_CallFunction(P->around_decode, "L", (long long)num_seqs);
        if (res == NULL) return -1;
        PyObject *sides[2];
        if (!PyArg_ParseTuple(res, "OO", &sides[0], &sides[1]) || !PyTuple_Check(sides[0]) ||
            !PyTuple_Check(sides[1]) ||
            PyTuple_GET_SIZE(sides[0]) + PyTuple_GET_SIZE(sides[1]) > MAX_AROUND) {
            Py_DECREF(res);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "around_decode: expected two short tuples");
            return -1;
        }
        int k = 1;
        for (int side = 0; side < 2; side++) {
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sides[side]); i++) {
                Cost c;
                if (!PyArg_ParseTuple(PyTuple_GET_ITEM(sides[side], i), "ddd", &c.seconds,
                                      &c.flops, &c.bytes) ||
                    costmap_put(&P->around_memo, around_key(num_seqs, k++), c) < 0) {
                    Py_DECREF(res);
                    return -1;
                }
            }
        }
        Cost n = {(double)PyTuple_GET_SIZE(sides[0]), (double)PyTuple_GET_SIZE(sides[1]), 0.0};
        Py_DECREF(res);
        if (costmap_put(&P->around_memo, around_key(num_seqs, 0), n) < 0) return -1;
        counts = costmap_get(&P->around_memo, around_key(num_seqs, 0));
    }
    *before = (int)counts->seconds;
    *after = (int)counts->flops;
    for (int k = 0; k < *before + *after; k++)
        ops[k] = *costmap_get(&P->around_memo, around_key(num_seqs, k + 1));
    return 0;
}

static void add_cost(Cost *to, const Cost *c) {
    to->seconds += c->seconds;
    to->flops += c->flops;
    to->bytes += c->bytes;
}

/* IterationTimer._add_decode_attention on the fast path: the attention kernel's work by
 * OpGraph.decode_attention_work (MlaOps.decode_attention_work), timed as
 * RooflineBackend.decode_attention_time, with MLA's kernels before and after it. */
/* IterationTimer._add_decode_attention's op loop, for a backend without the fast path: the
 * timer times each kernel, the loop adds them in order. */
static int add_decode_attention_ops(Pool *P, int64_t num_seqs, int64_t context, Cost *layer) {
    PyObject *res = PyObject_CallFunction(P->decode_attention, "LL", (long long)num_seqs,
                                          (long long)context);
    if (res == NULL) return -1;
    if (!PyTuple_Check(res)) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_TypeError, "decode_attention: expected a tuple of costs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(res); i++) {
        Cost c;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(res, i), "ddd", &c.seconds, &c.flops, &c.bytes)) {
            Py_DECREF(res);
            return -1;
        }
        add_cost(layer, &c);
    }
    Py_DECREF(res);
    return 0;
}

static int add_decode_attention(Pool *P, int64_t num_seqs, int64_t context, Cost *layer) {
    if (P->attention == ATTENTION_OPS) return add_decode_attention_ops(P, num_seqs, context, layer);
    double ctx = (double)context, attn_f, attn_b;
    if (P->attention == ATTENTION_MLA) {
        int64_t width = P->mla_latent + P->mla_kv_lora;
        attn_f = 2.0 * ctx * (double)P->mla_heads * (double)width;
        attn_b = (double)(context * P->mla_latent) * P->kv_bytes +
                 (double)(num_seqs * P->mla_heads * width) * P->act_bytes;
    } else {
        attn_f = 4.0 * ctx * P->q_size;
        attn_b = 2.0 * ctx * P->kv_size * P->kv_bytes +
                 2.0 * (double)num_seqs * P->q_size * P->act_bytes;
    }
    if (!(attn_f > 0.0)) {
        PyErr_SetString(PyExc_RuntimeError, "decode attention without FLOPs");
        return -1;
    }
    double compute = attn_f / P->decode_flops, memory = attn_b / P->bandwidth;
    Cost attn = {(memory > compute ? memory : compute) + P->launch, attn_f, attn_b};
    if (P->attention != ATTENTION_MLA) {
        add_cost(layer, &attn);
        return 0;
    }
    Cost ops[MAX_AROUND];
    int before, after;
    if (around_decode(P, num_seqs, ops, &before, &after) < 0) return -1;
    for (int k = 0; k < before; k++) add_cost(layer, &ops[k]);
    add_cost(layer, &attn);
    for (int k = before; k < before + after; k++) add_cost(layer, &ops[k]);
    return 0;
}

/* IterationTimer._with_attention: each prefill chunk's attention, then the decodes'. */
static int with_attention(Loop *L, Pool *P, Py_ssize_t num_chunks, int64_t num_decode,
                          int64_t decode_context, Cost *layer) {
    for (Py_ssize_t i = 0; i < num_chunks; i++) {
        Cost attn;
        if (prefill_cost(P, L->chunk_new[i], L->chunk_ctx[i], &attn) < 0) return -1;
        add_cost(layer, &attn);
    }
    if (num_decode) return add_decode_attention(P, num_decode, decode_context, layer);
    return 0;
}

/* IterationTimer._stage_sends: each stage's activation send to the next, by token count. */
static int stage_sends(Pool *P, int64_t num_tokens, double *sends) {
    int64_t known = (num_tokens << 8) | 255;
    if (costmap_get(&P->sends_memo, known) == NULL) {
        PyObject *res = PyObject_CallFunction(P->stage_sends, "L", (long long)num_tokens);
        if (res == NULL) return -1;
        if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != P->pp - 1) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "stage_sends: expected one time per stage but last");
            return -1;
        }
        for (Py_ssize_t i = 0; i < P->pp - 1; i++) {
            Cost c = {PyFloat_AsDouble(PyTuple_GET_ITEM(res, i)), 0.0, 0.0};
            if ((c.seconds == -1.0 && PyErr_Occurred()) ||
                costmap_put(&P->sends_memo, (num_tokens << 8) | i, c) < 0) {
                Py_DECREF(res);
                return -1;
            }
        }
        Py_DECREF(res);
        Cost mark = {0.0, 0.0, 0.0};
        if (costmap_put(&P->sends_memo, known, mark) < 0) return -1;
    }
    for (Py_ssize_t i = 0; i < P->pp - 1; i++)
        sends[i] = costmap_get(&P->sends_memo, (num_tokens << 8) | i)->seconds;
    return 0;
}

/* IterationTimer.step: prefill chunks (new, cached) plus num_decode decodes; each pipeline
 * stage's time goes to L->stage_time, their sum to out->seconds. */
static int step_cost(Loop *L, Pool *P, Py_ssize_t num_chunks, int64_t num_decode,
                     int64_t decode_context, int64_t num_sampled, Cost *out) {
    int64_t num_tokens = num_decode;
    for (Py_ssize_t i = 0; i < num_chunks; i++) num_tokens += L->chunk_new[i];
    Cost layer, head, moe = {0.0, 0.0, 0.0};
    if (layer_cost(P, num_tokens, &layer) < 0 ||
        with_attention(L, P, num_chunks, num_decode, decode_context, &layer) < 0 ||
        head_cost(P, num_tokens, num_sampled, &head) < 0)
        return -1;
    double cpu = P->step_overhead + P->seq_overhead * (double)(num_chunks + num_decode);
    double *stages = L->stage_time;
    if (P->num_moe_layers == 0) {
        double n = P->num_layers;
        out->flops = n * layer.flops + head.flops;
        out->bytes = n * layer.bytes + head.bytes;
        if (P->pp == 1) {
            out->seconds = stages[0] = cpu + n * layer.seconds + head.seconds;
            return 0;
        }
        for (Py_ssize_t i = 0; i < P->pp; i++)
            stages[i] = (double)P->stage_layers[i] * layer.seconds;
    } else {
        /* IterationTimer._moe_step: stages mix dense and MoE layers */
        if (moe_layer_cost(P, num_tokens, &moe) < 0 ||
            with_attention(L, P, num_chunks, num_decode, decode_context, &moe) < 0)
            return -1;
        double n_moe = (double)P->num_moe_layers, n_dense = P->num_layers - n_moe;
        out->flops = n_dense * layer.flops + n_moe * moe.flops + head.flops;
        out->bytes = n_dense * layer.bytes + n_moe * moe.bytes + head.bytes;
        for (Py_ssize_t i = 0; i < P->pp; i++)
            stages[i] = (double)(P->stage_layers[i] - P->stage_moe_layers[i]) * layer.seconds +
                        (double)P->stage_moe_layers[i] * moe.seconds;
    }
    /* The CPU prepares the batch before stage 0; the last stage runs the LM head. */
    stages[0] += cpu;
    stages[P->pp - 1] += head.seconds;
    if (P->pp > 1) {
        if (stage_sends(P, num_tokens, L->stage_send) < 0) return -1;
        for (Py_ssize_t i = 0; i < P->pp - 1; i++) stages[i] += L->stage_send[i];
    }
    double seconds = 0.0;
    for (Py_ssize_t i = 0; i < P->pp; i++) seconds += stages[i];
    out->seconds = seconds;
    return 0;
}

/* ------------------------------------------------------------------ sequences */

static int64_t blocks_needed(const Loop *L, int64_t tokens) {
    return (tokens + L->block_size - 1) / L->block_size;
}

static Py_ssize_t new_seq(Loop *L, Py_ssize_t request) {
    if (L->free_len == 0) {
        Py_ssize_t cap = L->seqs_cap ? 2 * L->seqs_cap : 1024;
        Seq *seqs = realloc(L->seqs, sizeof(Seq) * (size_t)cap);
        if (seqs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        L->seqs = seqs;
        int64_t *free_slots = realloc(L->free_slots, sizeof(int64_t) * (size_t)cap);
        if (free_slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        L->free_slots = free_slots;
        memset(&L->seqs[L->seqs_cap], 0, sizeof(Seq) * (size_t)(cap - L->seqs_cap));
        for (Py_ssize_t s = cap - 1; s >= L->seqs_cap; s--) L->free_slots[L->free_len++] = s;
        L->seqs_cap = cap;
    }
    Py_ssize_t slot = L->free_slots[--L->free_len];
    Seq *s = &L->seqs[slot];
    __typeof__(s->kv) kv = s->kv;
    memset(s, 0, sizeof(Seq));
    s->kv = kv;
    s->kv.nodes_len = s->kv.keys_len = 0;
    s->kv.keys_state = 0;
    s->request = request;
    s->input_len = L->input_len[request];
    s->output_len = L->output_len[request];
    s->prefill_instance = -1;
    s->first_scheduled_s = s->first_token_s = s->last_token_s = -1.0;
    return slot;
}

static void free_seq(Loop *L, int64_t slot) { L->free_slots[L->free_len++] = slot; }

/* MetricsCollector.on_finish / on_drop: the request's row (s: NULL for one never queued). */
static int write_ended(Loop *L, int64_t request, Py_ssize_t instance, int status, const Seq *s) {
    EndedRow row;
    memset(&row, 0, sizeof(row));
    row.request = request;
    row.instance = (int32_t)instance;
    row.status = status;
    row.finish_s = L->now;
    row.first_scheduled_s = row.first_token_s = -1.0;
    row.prefill_instance = -1;
    if (s != NULL) {
        row.first_scheduled_s = s->first_scheduled_s;
        row.first_token_s = s->first_token_s;
        row.generated = s->generated;
        row.preemptions = (int32_t)s->preemptions;
        row.prefill_instance = (int32_t)s->prefill_instance;
        row.kv_transfer_s = s->kv_transfer_s;
        row.cached_tokens = s->cached_tokens;
    }
    return buffer_put(&L->ended, &row, sizeof(row));
}

static int put_gaps(Loop *L, double gap, int64_t count) {
    if (count <= 0) return 0;
    GapRun run = {gap, count};
    return buffer_put(&L->gaps, &run, sizeof(run));
}

/* ------------------------------------------------------------------ waiting queue */

static int waiting_reserve(Engine *E) {
    if (E->waiting_len < E->waiting_cap) return 0;
    Py_ssize_t cap = E->waiting_cap ? 2 * E->waiting_cap : 64;
    int64_t *ring = malloc(sizeof(int64_t) * (size_t)cap);
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < E->waiting_len; i++)
        ring[i] = E->waiting[(E->waiting_head + i) % E->waiting_cap];
    free(E->waiting);
    E->waiting = ring;
    E->waiting_cap = cap;
    E->waiting_head = 0;
    return 0;
}

static int waiting_push_back(Engine *E, int64_t slot) {
    if (waiting_reserve(E) < 0) return -1;
    E->waiting[(E->waiting_head + E->waiting_len) % E->waiting_cap] = slot;
    E->waiting_len++;
    return 0;
}

static int waiting_push_front(Engine *E, int64_t slot) {
    if (waiting_reserve(E) < 0) return -1;
    E->waiting_head = (E->waiting_head + E->waiting_cap - 1) % E->waiting_cap;
    E->waiting[E->waiting_head] = slot;
    E->waiting_len++;
    return 0;
}

static int64_t waiting_front(const Engine *E) { return E->waiting[E->waiting_head]; }

static void waiting_pop_front(Engine *E) {
    E->waiting_head = (E->waiting_head + 1) % E->waiting_cap;
    E->waiting_len--;
}

/* ------------------------------------------------------------------ KV blocks (block_manager.py) */

/* Where a waiting request starts when admitted (block_manager.py PrefixHit): `tokens` with
 * KV; with prefix caching, `len` cached blocks (nodes and device blocks in L->hit_nodes,
 * L->hit_blocks), `evictable` of them sitting unreferenced in the cache. */
typedef struct {
    int64_t tokens, evictable;
    Py_ssize_t len;
} Hit;

static int64_t num_free(const Engine *E) {
    const PrefixCache *c = E->pc;
    if (c == NULL) return E->free_blocks;
    return c->num_blocks - c->next_fresh + c->returned_len + c->cached;
}

static int grow_ints(int64_t **items, Py_ssize_t *cap, Py_ssize_t need) {
    if (need <= *cap) return 0;
    Py_ssize_t grown = *cap ? *cap : 16;
    while (grown < need) grown *= 2;
    int64_t *more = realloc(*items, sizeof(int64_t) * (size_t)grown);
    if (more == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *items = more;
    *cap = grown;
    return 0;
}

static void lru_append(PrefixCache *c, int64_t b) {
    c->prev[b] = c->tail;
    c->next[b] = -1;
    if (c->tail >= 0)
        c->next[c->tail] = b;
    else
        c->head = b;
    c->tail = b;
    c->cached++;
}

static void lru_remove(PrefixCache *c, int64_t b) {
    if (c->prev[b] >= 0)
        c->next[c->prev[b]] = c->next[b];
    else
        c->head = c->next[b];
    if (c->next[b] >= 0)
        c->prev[c->next[b]] = c->prev[b];
    else
        c->tail = c->prev[b];
    c->cached--;
}

static NodeInfo *node_info(PrefixCache *c, int64_t node) {
    return &c->info[pairmap_get(&c->info_of, node, 0)];
}

static int add_holder(NodeInfo *n, int64_t block) {
    if (grow_ints(&n->holders, &n->cap, n->len + 1) < 0) return -1;
    n->holders[n->len++] = block;
    return 0;
}

/* PrefixCachingBlockManager._evict without an offload tier: the block's content goes; a node
 * with no other holder is forgotten (later lookups miss). */
static void evict(PrefixCache *c, int64_t block) {
    int64_t node = c->node[block];
    c->node[block] = -1;
    c->evicted++;
    NodeInfo *n = node_info(c, node);
    if (n->len > 1) {
        Py_ssize_t i = 0;
        while (n->holders[i] != block) i++;
        memmove(&n->holders[i], &n->holders[i + 1], sizeof(int64_t) * (size_t)(n->len - i - 1));
        n->len--;
        return;
    }
    n->len = 0;
    int64_t index = pairmap_get(&c->info_of, node, 0);
    pairmap_del(&c->node_of, n->parent, n->key);
    pairmap_del(&c->info_of, node, 0);
    c->free_info[c->free_info_len++] = index;
}

/* BlockManager._take_free: `count` more blocks for `s` (with prefix caching: empty blocks
 * first, then the least recently freed cached ones, their content evicted). */
static int take_free(Engine *E, Seq *s, int64_t count) {
    PrefixCache *c = E->pc;
    if (c == NULL) {
        E->free_blocks -= count;
        s->blocks += count;
        return 0;
    }
    if (grow_ints(&s->kv.blocks, &s->kv.blocks_cap, s->blocks + count) < 0) return -1;
    for (int64_t k = 0; k < count; k++) {
        int64_t b;
        if (c->next_fresh < c->num_blocks) {
            b = c->next_fresh++;
        } else if (c->returned_len > 0) {
            b = c->returned[--c->returned_len];
        } else {
            b = c->head;
            lru_remove(c, b);
            evict(c, b);
        }
        c->ref[b] = 1;
        s->kv.blocks[s->blocks++] = b;
    }
    return 0;
}

/* PrefixCachingBlockManager._keys: the request's block content keys, asked once. */
static int fetch_keys(Loop *L, Seq *s) {
    if (s->kv.keys_state) return 0;
    s->kv.keys_state = 1;
    PyObject *res = PyObject_CallFunction(L->block_keys, "L", (long long)s->request);
    if (res == NULL) return -1;
    if (res == Py_None) {
        Py_DECREF(res);
        return 0;
    }
    long long root;
    Py_buffer keys;
    if (!PyArg_ParseTuple(res, "Ly*", &root, &keys)) {
        Py_DECREF(res);
        return -1;
    }
    Py_ssize_t n = keys.len / (Py_ssize_t)sizeof(int64_t);
    int ok = grow_ints(&s->kv.keys, &s->kv.keys_cap, n) == 0;
    if (ok) memcpy(s->kv.keys, keys.buf, sizeof(int64_t) * (size_t)n);
    PyBuffer_Release(&keys);
    Py_DECREF(res);
    if (!ok) return -1;
    s->kv.keys_len = n;
    s->kv.root = root;
    s->kv.keys_state = 2;
    return 0;
}

/* PrefixCachingBlockManager.register_computed: name the content of the request's newly full,
 * computed blocks (a node that exists gets one more holder). */
static int register_computed(Loop *L, Engine *E, Seq *s) {
    PrefixCache *c = E->pc;
    if (s->num_computed < (s->kv.nodes_len + 1) * L->block_size) return 0;
    if (fetch_keys(L, s) < 0) return -1;
    if (s->kv.keys_state != 2) return 0;
    Py_ssize_t full = (Py_ssize_t)(s->num_computed / L->block_size);
    if (full > s->kv.keys_len) full = s->kv.keys_len;
    if (s->kv.nodes_len >= full) return 0;
    if (grow_ints(&s->kv.nodes, &s->kv.nodes_cap, full) < 0) return -1;
    int64_t parent = s->kv.nodes_len ? s->kv.nodes[s->kv.nodes_len - 1] : s->kv.root;
    for (Py_ssize_t i = s->kv.nodes_len; i < full; i++) {
        int64_t key = s->kv.keys[i], block = s->kv.blocks[i];
        int64_t node = pairmap_get(&c->node_of, parent, key);
        NodeInfo *n;
        if (node < 0) {
            node = c->next_node++;
            if (pairmap_put(&c->node_of, parent, key, node) < 0) return -1;
            if (c->free_info_len == 0) {
                Py_ssize_t cap = c->info_cap ? 2 * c->info_cap : 1024;
                NodeInfo *info = realloc(c->info, sizeof(NodeInfo) * (size_t)cap);
                if (info == NULL) return PyErr_NoMemory(), -1;
                c->info = info;
                memset(&c->info[c->info_cap], 0, sizeof(NodeInfo) * (size_t)(cap - c->info_cap));
                int64_t *free_info = realloc(c->free_info, sizeof(int64_t) * (size_t)cap);
                if (free_info == NULL) return PyErr_NoMemory(), -1;
                c->free_info = free_info;
                for (Py_ssize_t k = cap - 1; k >= c->info_cap; k--)
                    c->free_info[c->free_info_len++] = k;
                c->info_cap = cap;
            }
            int64_t index = c->free_info[--c->free_info_len];
            if (pairmap_put(&c->info_of, node, 0, index) < 0) return -1;
            n = &c->info[index];
            n->parent = parent;
            n->key = key;
            n->len = 0;
        } else {
            n = node_info(c, node);
        }
        if (add_holder(n, block) < 0) return -1;
        c->node[block] = node;
        s->kv.nodes[s->kv.nodes_len++] = node;
        parent = node;
    }
    return 0;
}

/* BlockManager.lookup (prefix caching: the longest cached run of the request's leading
 * blocks, at most all but its last token; nothing is taken). */
static int lookup(Loop *L, Engine *E, Seq *s, Hit *h) {
    h->tokens = s->num_computed;
    h->evictable = 0;
    h->len = 0;
    PrefixCache *c = E->pc;
    if (c == NULL || s->num_computed) return 0;
    if (fetch_keys(L, s) < 0) return -1;
    if (s->kv.keys_state != 2) return 0;
    Py_ssize_t limit = (Py_ssize_t)((s->input_len + s->generated - 1) / L->block_size);
    if (limit > s->kv.keys_len) limit = s->kv.keys_len;
    if (grow_ints(&L->hit_nodes, &L->hit_nodes_cap, limit) < 0 ||
        grow_ints(&L->hit_blocks, &L->hit_blocks_cap, limit) < 0)
        return -1;
    int64_t parent = s->kv.root;
    for (Py_ssize_t i = 0; i < limit; i++) {
        int64_t node = pairmap_get(&c->node_of, parent, s->kv.keys[i]);
        if (node < 0) break;
        const NodeInfo *n = node_info(c, node);
        if (n->len == 0) break;
        int64_t block = n->holders[0];
        h->evictable += c->ref[block] == 0;
        L->hit_nodes[h->len] = node;
        L->hit_blocks[h->len++] = block;
        parent = node;
    }
    h->tokens = (int64_t)h->len * L->block_size;
    return 0;
}

/* BlockManager.extra_blocks with a hit: blocks the free pool gives up for an admission. */
static int64_t extra_blocks(const Loop *L, const Hit *h, int64_t num_new) {
    return blocks_needed(L, h->tokens + num_new) - (int64_t)h->len + h->evictable;
}

/* BlockManager.allocate at admission: share the hit's blocks, then take the rest. */
static int allocate_from(Loop *L, Engine *E, Seq *s, int64_t num_new, const Hit *h) {
    PrefixCache *c = E->pc;
    if (c != NULL && h->len > 0) {
        for (Py_ssize_t k = 0; k < h->len; k++) {
            int64_t b = L->hit_blocks[k];
            if (c->ref[b] == 0) lru_remove(c, b);
            c->ref[b]++;
        }
        if (grow_ints(&s->kv.blocks, &s->kv.blocks_cap, h->len) < 0 ||
            grow_ints(&s->kv.nodes, &s->kv.nodes_cap, h->len) < 0)
            return -1;
        memcpy(s->kv.blocks, L->hit_blocks, sizeof(int64_t) * (size_t)h->len);
        memcpy(s->kv.nodes, L->hit_nodes, sizeof(int64_t) * (size_t)h->len);
        s->blocks = h->len;
        s->kv.nodes_len = h->len;
    }
    s->num_computed = h->tokens;
    int64_t need = blocks_needed(L, s->num_computed + num_new) - s->blocks;
    return need > 0 ? take_free(E, s, need) : 0;
}

/* BlockManager.try_allocate for a running request: 1 when its blocks now hold `num_new`
 * more tokens, 0 when the pool is short. */
static int try_allocate(Loop *L, Engine *E, Seq *s, int64_t num_new) {
    int64_t need = blocks_needed(L, s->num_computed + num_new) - s->blocks;
    if (E->pc == NULL && need <= 0) return 1;
    if (need > 0 && need > num_free(E)) return 0;
    if (E->pc != NULL && register_computed(L, E, s) < 0) return -1;
    if (need > 0 && take_free(E, s, need) < 0) return -1;
    return 1;
}

/* BlockManager.free: drop the request's blocks (with prefix caching, those holding content
 * stay cached, the tail first in the eviction order). */
static int free_all(Loop *L, Engine *E, Seq *s) {
    PrefixCache *c = E->pc;
    if (c == NULL) {
        E->free_blocks += s->blocks;
        s->blocks = 0;
        return 0;
    }
    if (register_computed(L, E, s) < 0) return -1;
    for (int64_t i = s->blocks - 1; i >= 0; i--) {
        int64_t b = s->kv.blocks[i];
        if (--c->ref[b] == 0) {
            if (c->node[b] < 0)
                c->returned[c->returned_len++] = b;
            else
                lru_append(c, b);
        }
    }
    s->blocks = 0;
    s->kv.nodes_len = 0;
    return 0;
}

static PrefixCache *new_prefix_cache(int64_t num_blocks) {
    PrefixCache *c = calloc(1, sizeof(PrefixCache));
    if (c == NULL) return (PrefixCache *)PyErr_NoMemory();
    c->num_blocks = num_blocks;
    c->head = c->tail = -1;
    size_t n = (size_t)num_blocks;
    c->ref = calloc(n, sizeof(int64_t));
    c->node = malloc(n * sizeof(int64_t));
    c->prev = malloc(n * sizeof(int64_t));
    c->next = malloc(n * sizeof(int64_t));
    c->returned = malloc(n * sizeof(int64_t));
    if (!c->ref || !c->node || !c->prev || !c->next || !c->returned) {
        PyErr_NoMemory();
        return c; /* the caller frees it */
    }
    for (size_t b = 0; b < n; b++) c->node[b] = -1;
    if (pairmap_init(&c->node_of, 1024) < 0 || pairmap_init(&c->info_of, 1024) < 0) return c;
    return c;
}

static void free_prefix_cache(PrefixCache *c) {
    if (c == NULL) return;
    free(c->ref);
    free(c->node);
    free(c->prev);
    free(c->next);
    free(c->returned);
    free(c->node_of.slots);
    free(c->info_of.slots);
    for (Py_ssize_t i = 0; i < c->info_cap; i++) free(c->info[i].holders);
    free(c->info);
    free(c->free_info);
    free(c);
}

/* ------------------------------------------------------------------ scheduler (vllm.py) */

/* Scheduler._end_pass: count the tokens this stay computed that the request had before. */
static void end_pass(Engine *E, Seq *s) {
    int64_t upto = s->num_computed < s->max_computed ? s->num_computed : s->max_computed;
    int64_t again = upto - s->pass_start;
    if (again > 0) E->recomputed_tokens += again;
    if (s->num_computed > s->max_computed) s->max_computed = s->num_computed;
}

/* Scheduler.preempt: free the KV, back to the head of the queue. Swap keeps the computed
 * tokens in host memory (SwapSpace.swap_out) when they fit there; recompute drops them. */
static int preempt(Loop *L, Engine *E, int64_t slot) {
    Seq *s = &L->seqs[slot];
    end_pass(E, s);
    int swapped = 0;
    if (L->swap) {
        int64_t num = s->blocks;
        if (num != 0 && E->swap_used + num <= E->swap_capacity) {
            E->swap_used += num;
            if (E->swap_used > E->swap_peak) E->swap_peak = E->swap_used;
            s->swapped_blocks = num;
            E->to_host += num;
            E->pending_to_host += num;
            swapped = 1;
        } else {
            E->swap_fallbacks++;
        }
    }
    if (free_all(L, E, s) < 0) return -1;
    if (!swapped) s->num_computed = 0;
    s->preemptions++;
    E->preemptions++;
    return waiting_push_front(E, slot);
}

static void add_to_batch(Engine *E, int64_t slot, int64_t num_new) {
    E->batch_slot[E->batch_len] = slot;
    E->batch_tokens[E->batch_len++] = num_new;
}

static int64_t max_kv_tokens(const Seq *s) { return s->input_len + s->output_len - 1; }

/* Scheduler.admit: start the head of the queue from `hit` with blocks for `num_new` tokens. */
static int admit(Loop *L, Engine *E, int64_t slot, int64_t num_new, const Hit *h) {
    Seq *s = &L->seqs[slot];
    waiting_pop_front(E);
    if (s->swapped_blocks && L->swap) { /* SwapSpace.swap_in: the blocks come back */
        E->swap_used -= s->swapped_blocks;
        E->to_device += s->swapped_blocks;
        E->pending_to_device += s->swapped_blocks;
        s->swapped_blocks = 0;
    }
    if (allocate_from(L, E, s, num_new, h) < 0) return -1;
    if (s->admissions == 0) s->cached_tokens = s->num_computed;
    s->admissions++;
    s->pass_start = s->num_computed;
    E->running[E->running_len++] = slot;
    return 0;
}

/* The policy's prefill_tokens: tokens a waiting request may start with after its hit (0: it
 * must wait). vllm: any chunk; orca: the whole prompt, or a too-long one alone in an empty
 * step; no_evict: as vllm, once its whole lifetime's KV fits what running requests have not
 * been promised. */
static int64_t prefill_tokens(Loop *L, Engine *E, const Seq *s, const Hit *h, int64_t budget,
                              int step_is_empty) {
    int64_t left = s->input_len + s->generated - h->tokens;
    if (L->policy == POLICY_ORCA) return left <= budget || step_is_empty ? left : 0;
    if (L->policy == POLICY_NO_EVICT) {
        int64_t lifetime = 0, held = 0;
        for (Py_ssize_t k = 0; k < E->running_len; k++) {
            const Seq *r = &L->seqs[E->running[k]];
            lifetime += blocks_needed(L, max_kv_tokens(r));
            held += r->blocks;
        }
        if (extra_blocks(L, h, max_kv_tokens(s) - h->tokens) > num_free(E) - (lifetime - held))
            return 0;
    }
    return left < budget ? left : budget;
}

/* VllmScheduler.schedule (vllm, sarathi, orca, no_evict): running requests first, then waiting
 * ones, in one token budget. */
static int schedule_continuous(Loop *L, Engine *E) {
    int64_t budget = L->max_num_batched_tokens;
    int preempted = 0;
    Py_ssize_t i = 0;
    while (i < E->running_len && budget > 0) {
        int64_t slot = E->running[i];
        Seq *s = &L->seqs[slot];
        int64_t wanted = s->input_len + s->generated - s->num_computed;
        int64_t num_new = wanted < budget ? wanted : budget;
        /* BlockManager.try_allocate, preempting the latest admitted until it fits */
        int self_preempted = 0;
        for (;;) {
            int fits = try_allocate(L, E, s, num_new);
            if (fits < 0) return -1;
            if (fits) break;
            int64_t victim = E->running[--E->running_len];
            if (preempt(L, E, victim) < 0) return -1;
            preempted = 1;
            if (victim == slot) {
                self_preempted = 1;
                break;
            }
        }
        if (self_preempted) break;
        add_to_batch(E, slot, num_new);
        budget -= num_new;
        i++;
    }
    if (preempted || E->waiting_len == 0) return 0;
    while (E->waiting_len > 0 && budget > 0 && E->running_len < L->max_num_seqs) {
        int64_t slot = waiting_front(E);
        Seq *s = &L->seqs[slot];
        Hit h;
        if (lookup(L, E, s, &h) < 0) return -1;
        int64_t num_new = prefill_tokens(L, E, s, &h, budget, E->batch_len == 0);
        if (num_new == 0 || extra_blocks(L, &h, num_new) > num_free(E)) break;
        if (admit(L, E, slot, num_new, &h) < 0) return -1;
        add_to_batch(E, slot, num_new);
        budget -= num_new;
    }
    return 0;
}

/* StaticScheduler.schedule: an idle engine forms a batch whose KV for every request's whole
 * lifetime is reserved up front; the batch runs, each request computing what it has left,
 * until its last request finishes. */
static int schedule_static(Loop *L, Engine *E) {
    if (E->running_len == 0) {
        int64_t budget = L->max_num_batched_tokens;
        while (E->waiting_len > 0 && E->running_len < L->max_num_seqs) {
            int64_t slot = waiting_front(E);
            Seq *s = &L->seqs[slot];
            Hit h;
            if (lookup(L, E, s, &h) < 0) return -1;
            int64_t lifetime = max_kv_tokens(s) - h.tokens;
            int64_t prompt = s->input_len + s->generated - h.tokens;
            if (extra_blocks(L, &h, lifetime) > num_free(E) ||
                (prompt > budget && E->running_len > 0))
                break;
            if (admit(L, E, slot, lifetime, &h) < 0) return -1;
            budget -= prompt;
        }
    }
    for (Py_ssize_t k = 0; k < E->running_len; k++) {
        const Seq *s = &L->seqs[E->running[k]];
        add_to_batch(E, E->running[k], s->input_len + s->generated - s->num_computed);
    }
    return 0;
}

static int schedule(Loop *L, Engine *E) {
    E->batch_len = 0;
    return L->policy == POLICY_STATIC ? schedule_static(L, E) : schedule_continuous(L, E);
}

/* ------------------------------------------------------------------ events (min-heap) */

static int event_before(const Event *a, const Event *b) {
    if (a->time != b->time) return a->time < b->time;
    if (a->kind != b->kind) return a->kind < b->kind;
    if (a->instance != b->instance) return a->instance < b->instance;
    return a->arg < b->arg;
}

static int push_event(Loop *L, Event e) {
    if (L->events_len == L->events_cap) {
        Py_ssize_t cap = L->events_cap ? 2 * L->events_cap : 64;
        Event *events = realloc(L->events, sizeof(Event) * (size_t)cap);
        if (events == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        L->events = events;
        L->events_cap = cap;
    }
    Py_ssize_t i = L->events_len++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!event_before(&e, &L->events[parent])) break;
        L->events[i] = L->events[parent];
        i = parent;
    }
    L->events[i] = e;
    return 0;
}

static Event pop_event(Loop *L) {
    Event top = L->events[0], last = L->events[--L->events_len];
    Py_ssize_t i = 0, n = L->events_len;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && event_before(&L->events[child + 1], &L->events[child])) child++;
        if (!event_before(&L->events[child], &last)) break;
        L->events[i] = L->events[child];
        i = child;
    }
    if (n > 0) L->events[i] = last;
    return top;
}

/* ------------------------------------------------------------------ instance (instance.py) */

static int64_t instance_free_blocks(const Inst *I) {
    int64_t free = 0;
    for (Py_ssize_t k = 0; k < I->pool->pp; k++) free += num_free(&I->engines[k]);
    return free;
}

static int64_t instance_waiting(const Inst *I) {
    int64_t waiting = 0;
    for (Py_ssize_t k = 0; k < I->pool->pp; k++) waiting += I->engines[k].waiting_len;
    return waiting;
}

/* Instance._publish_load: routers written in Python read the cluster's load board. */
static void publish_load(Loop *L, Py_ssize_t index) {
    if (L->board != NULL) L->board[index] = L->inst[index].incoming + L->inst[index].outstanding;
}

/* Instance._expire + Scheduler.expire_waiting: drop the requests that never started and
 * waited request_timeout_s by now; the scan stops at the first one still in time (requests
 * that started, preempted or handed over, queue ahead of new ones and never expire). */
static int expire_waiting(Loop *L, Py_ssize_t index, Engine *E) {
    Inst *I = &L->inst[index];
    Py_ssize_t i = 0;
    while (i < E->waiting_len) {
        int64_t slot = E->waiting[(E->waiting_head + i) % E->waiting_cap];
        Seq *s = &L->seqs[slot];
        if (s->admissions) {
            i++;
            continue;
        }
        if (!(L->now - L->arrival[s->request] >= L->request_timeout_s)) break;
        for (Py_ssize_t k = i; k + 1 < E->waiting_len; k++)
            E->waiting[(E->waiting_head + k) % E->waiting_cap] =
                E->waiting[(E->waiting_head + k + 1) % E->waiting_cap];
        E->waiting_len--;
        E->outstanding--;
        I->outstanding--;
        publish_load(L, index);
        if (write_ended(L, s->request, index, STATUS_TIMED_OUT, s) < 0) return -1;
        free_seq(L, slot);
    }
    return 0;
}

/* HostLink.seconds: copies of `blocks` blocks in one direction. */
static double link_seconds(const Pool *P, int64_t blocks) {
    return blocks ? P->link_latency_s + (double)blocks * P->block_bytes / P->link_bandwidth : 0.0;
}

/* Instance._start_engine: schedule, time and record virtual engine k's next batch, if it has
 * one; returns 1 when a batch started. */
static int start_engine(Loop *L, Py_ssize_t index, Py_ssize_t k) {
    Inst *I = &L->inst[index];
    Engine *E = &I->engines[k];
    Pool *P = I->pool;
    if (L->request_timeout_s >= 0 && expire_waiting(L, index, E) < 0) return -1;
    if (schedule(L, E) < 0) return -1;
    if (E->batch_len == 0) return 0;
    /* Instance._batch_shape */
    Py_ssize_t num_chunks = 0;
    int64_t num_decode = 0, decode_context = 0, num_sampled = 0, num_tokens = 0;
    for (Py_ssize_t b = 0; b < E->batch_len; b++) {
        Seq *s = &L->seqs[E->batch_slot[b]];
        int64_t num_new = E->batch_tokens[b];
        int64_t computed = s->num_computed;
        int samples = computed + num_new == s->input_len + s->generated;
        num_tokens += num_new;
        if (samples && num_new == 1 && s->generated > 0) {
            num_decode++;
            decode_context += computed + 1;
        } else {
            L->chunk_new[num_chunks] = num_new;
            L->chunk_ctx[num_chunks++] = computed;
            if (s->first_scheduled_s < 0) s->first_scheduled_s = L->now;
        }
        num_sampled += samples;
    }
    Cost cost;
    if (step_cost(L, P, num_chunks, num_decode, decode_context, num_sampled, &cost) < 0)
        return -1;
    double seconds = cost.seconds;
    /* Scheduler.take_transfer_seconds: the swap copies requested since the last step run
     * before this one's forward pass (TransferLedger.take_seconds). */
    double transfer = 0.0;
    if (E->pending_to_device || E->pending_to_host) {
        transfer = link_seconds(P, E->pending_to_device) + link_seconds(P, E->pending_to_host);
        E->pending_to_device = E->pending_to_host = 0;
        E->transfer_s += transfer;
    }
    /* Instance._run_pipeline: a stage takes the batch when the previous one left it. */
    double t = L->now + transfer;
    for (Py_ssize_t stage = 0; stage < P->pp; stage++) {
        t = (I->stage_free[stage] > t ? I->stage_free[stage] : t) + L->stage_time[stage];
        I->stage_free[stage] = t;
    }
    double finish = t;
    /* Instance._record_step */
    int64_t num_seqs = num_chunks + num_decode;
    int64_t used = P->num_blocks - instance_free_blocks(I);
    I->iterations++;
    I->busy_s += seconds;
    I->decode_tokens += num_decode;
    I->prefill_tokens += num_tokens - num_decode;
    if (num_seqs > I->max_batch_size) I->max_batch_size = num_seqs;
    if (used > I->kv_peak_blocks) I->kv_peak_blocks = used;
    double step_w = P->idle_w * P->tp;
    if (seconds > 0) {
        double compute = cost.flops / P->peak_flops, memory = cost.bytes / P->mem_bandwidth;
        double busy = memory > compute ? memory : compute;
        double ratio = busy / seconds;
        double utilization = ratio < 1.0 ? ratio : 1.0;
        double power = P->idle_w + P->dynamic_w * utilization;
        I->busy_device_s += seconds * P->tp;
        double step_energy = power * seconds * P->tp + 0.0;
        I->energy_busy_j += step_energy;
        step_w = step_energy / seconds;
    }
    if (L->record_steps) {
        StepRow row = {(int64_t)index, (int64_t)k, L->now, seconds, num_seqs,
                       num_tokens - num_decode, num_decode, used, P->num_blocks,
                       instance_waiting(I), step_w};
        if (buffer_put(&L->step_rows, &row, sizeof(row)) < 0) return -1;
    }
    E->busy = 1;
    Event end = {finish, EVENT_STEP_END, (int64_t)index, (int64_t)k, -1};
    if (push_event(L, end) < 0) return -1;
    return 1;
}

/* Instance.start_step: start the next batch if stage 0 is free and an idle virtual engine
 * (in turn, from the one after the last to start) has work; returns 1 when one started. */
static int start_step(Loop *L, Py_ssize_t index) {
    Inst *I = &L->inst[index];
    Py_ssize_t count = I->pool->pp;
    if (I->stage_free[0] > L->now) return 0;
    for (Py_ssize_t offset = 0; offset < count; offset++) {
        Py_ssize_t k = (I->next_engine + offset) % count;
        if (I->engines[k].busy) continue;
        int started = start_engine(L, index, k);
        if (started < 0) return -1;
        if (started) {
            I->next_engine = (k + 1) % count;
            return 1;
        }
    }
    return 0;
}

/* engine.py _try_start: start what can start; a pipelined instance whose stage 0 is busy
 * while an idle engine has work wakes up when stage 0 frees. */
static int try_start(Loop *L, Py_ssize_t index) {
    Inst *I = &L->inst[index];
    Py_ssize_t count = I->pool->pp;
    int started;
    do {
        started = start_step(L, index);
        if (started < 0) return -1;
    } while (started && count > 1);
    if (count == 1 || !(I->stage_free[0] > L->now)) return 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        const Engine *E = &I->engines[k];
        if (!E->busy && (E->waiting_len > 0 || E->running_len > 0)) {
            double wake = I->stage_free[0];
            if (wake != I->wake_at) {
                I->wake_at = wake;
                Event e = {wake, EVENT_WAKE, (int64_t)index, 0, -1};
                return push_event(L, e);
            }
            return 0;
        }
    }
    return 0;
}

/* Instance.end_step + Scheduler.step_done for virtual engine k: tokens, samples, finished
 * requests; returns the number of requests a prefill instance hands off (L->handoffs). */
static Py_ssize_t end_step(Loop *L, Py_ssize_t index, Py_ssize_t k) {
    Inst *I = &L->inst[index];
    Engine *E = &I->engines[k];
    double now = L->now, gap = 0.0;
    int64_t gaps = 0;
    Py_ssize_t leaving = 0, handed_off = 0;
    for (Py_ssize_t b = 0; b < E->batch_len; b++) {
        int64_t slot = E->batch_slot[b];
        Seq *s = &L->seqs[slot];
        s->num_computed += E->batch_tokens[b];
        if (s->num_computed != s->input_len + s->generated) continue;
        s->generated++;
        if (s->first_token_s < 0) {
            s->first_token_s = now;
        } else if (now - s->last_token_s == gap) {
            gaps++;
        } else {
            if (put_gaps(L, gap, gaps) < 0) return -1;
            gap = now - s->last_token_s;
            gaps = 1;
        }
        s->last_token_s = now;
        if (s->generated >= s->output_len) {
            s->leaving = 1;
            leaving++;
            E->outstanding--;
            I->outstanding--;
            publish_load(L, index);
            if (write_ended(L, s->request, index, STATUS_FINISHED, s) < 0) return -1;
        } else if (I->pool->role == ROLE_PREFILL) {
            s->leaving = 2;
            leaving++;
            E->outstanding--;
            I->outstanding--;
            publish_load(L, index);
            L->handoffs[handed_off++] = slot;
        }
    }
    if (put_gaps(L, gap, gaps) < 0) return -1;
    E->batch_len = 0;
    E->busy = 0;
    if (leaving) {
        Py_ssize_t kept = 0;
        for (Py_ssize_t r = 0; r < E->running_len; r++) {
            int64_t slot = E->running[r];
            Seq *s = &L->seqs[slot];
            if (s->leaving) {
                end_pass(E, s);
                if (free_all(L, E, s) < 0) return -1;
                if (s->leaving == 1) free_seq(L, slot);
                s->leaving = 0;
            } else {
                E->running[kept++] = slot;
            }
        }
        E->running_len = kept;
    }
    return handed_off;
}

/* Instance.add: queue a request (arriving, or whose KV cache arrived) with the virtual engine
 * that has the fewest requests, or end it if it can never fit or the queue is full. `slot` < 0:
 * a new request, else the transferred one. */
static int add_request(Loop *L, Py_ssize_t index, Py_ssize_t request, int64_t slot) {
    Inst *I = &L->inst[index];
    Engine *E = &I->engines[0];
    for (Py_ssize_t k = 1; k < I->pool->pp; k++)
        if (I->engines[k].outstanding < E->outstanding) E = &I->engines[k];
    if (slot >= 0) {
        I->incoming--;
        publish_load(L, index);
    }
    const Seq *s = slot >= 0 ? &L->seqs[slot] : NULL;
    int64_t needed = blocks_needed(L, L->input_len[request] + L->output_len[request] - 1);
    int64_t capacity = I->pool->engine_blocks;
    if (needed > capacity || (slot < 0 && L->max_queue >= 0 && E->waiting_len >= L->max_queue)) {
        int status = needed > capacity ? STATUS_FAILED : STATUS_REJECTED;
        if (write_ended(L, request, index, status, s) < 0) return -1;
        if (slot >= 0) free_seq(L, slot);
        return 0;
    }
    if (slot < 0) {
        slot = new_seq(L, request);
        if (slot < 0) return -1;
    }
    E->outstanding++;
    I->outstanding++;
    publish_load(L, index);
    return waiting_push_back(E, slot);
}

/* cluster/routers.py: round_robin; least_outstanding (ties rotate from one past the last
 * pick); least_kv (most free KV blocks per block, then fewest outstanding: the first such). */
/* One draw of a random router: a member's position (random) or two (power_of_two_choices). */
static int draw(Router *R, Py_ssize_t *picks, Py_ssize_t count) {
    PyObject *res = PyObject_CallNoArgs(R->draw);
    if (res == NULL) return -1;
    int ok = count == 1 ? PyArg_Parse(res, "n", &picks[0])
                        : PyArg_ParseTuple(res, "nn", &picks[0], &picks[1]);
    Py_DECREF(res);
    if (!ok) return -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (picks[i] < 0 || picks[i] >= R->count) {
            PyErr_SetString(PyExc_IndexError, "router draw out of range");
            return -1;
        }
    }
    return 0;
}

/* A router written in Python (prefix_aware) picks for request `request`; it reads the loads
 * the loop publishes to the cluster's load board. */
static Py_ssize_t route_in_python(Loop *L, Router *R, Py_ssize_t request) {
    PyObject *res = PyObject_CallFunction(R->draw, "n", request);
    if (res == NULL) return -1;
    Py_ssize_t index = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    if (index == -1 && PyErr_Occurred()) return -1;
    if (index < 0 || index >= L->num_instances) {
        PyErr_SetString(PyExc_IndexError, "router picked no instance of the loop");
        return -1;
    }
    return index;
}

/* Returns the chosen instance for request `request`, or -1 with an exception set (a Python
 * router or a draw failed). */
static Py_ssize_t route(Loop *L, Router *R, Py_ssize_t request) {
    Py_ssize_t n = R->count, start = R->next, best = start;
    if (R->kind == ROUTER_ROUND_ROBIN) {
        R->next = (start + 1) % n;
        return R->members[start];
    }
    if (R->kind == ROUTER_RANDOM || (R->kind == ROUTER_POWER_OF_TWO && n > 1)) {
        Py_ssize_t picks[2];
        if (draw(R, picks, R->kind == ROUTER_RANDOM ? 1 : 2) < 0) return -1;
        if (R->kind == ROUTER_RANDOM) return R->members[picks[0]];
        const Inst *a = &L->inst[R->members[picks[0]]], *b = &L->inst[R->members[picks[1]]];
        return R->members[b->incoming + b->outstanding < a->incoming + a->outstanding ? picks[1]
                                                                                   : picks[0]];
    }
    if (R->kind == ROUTER_POWER_OF_TWO) return R->members[0];
    if (R->kind == ROUTER_PYTHON) return route_in_python(L, R, request);
    if (R->kind == ROUTER_LEAST_KV) {
        best = 0;
        const Inst *b = &L->inst[R->members[0]];
        double best_free = (double)instance_free_blocks(b) / (double)b->pool->num_blocks;
        for (Py_ssize_t k = 1; k < n; k++) {
            const Inst *I = &L->inst[R->members[k]];
            double free = (double)instance_free_blocks(I) / (double)I->pool->num_blocks;
            b = &L->inst[R->members[best]];
            if (free > best_free || (free == best_free && I->incoming + I->outstanding <
                                                              b->incoming + b->outstanding)) {
                best = k;
                best_free = free;
            }
        }
        return R->members[best];
    }
    const Inst *first = &L->inst[R->members[start]];
    int64_t best_load = first->incoming + first->outstanding;
    for (Py_ssize_t k = 1; k < n; k++) {
        Py_ssize_t j = (start + k) % n;
        const Inst *I = &L->inst[R->members[j]];
        if (I->incoming + I->outstanding < best_load) {
            best = j;
            best_load = I->incoming + I->outstanding;
        }
    }
    R->next = (best + 1) % n;
    return R->members[best];
}

/* engine.py _start_transfer + Cluster.hand_off: the decode instance and the KV's travel. */
static int start_transfer(Loop *L, Py_ssize_t source, int64_t slot) {
    Seq *s = &L->seqs[slot];
    Py_ssize_t target = route(L, &L->decode, (Py_ssize_t)s->request);
    if (target < 0) return -1;
    L->inst[target].incoming++;
    publish_load(L, target);
    PyObject *res = PyObject_CallFunction(L->kv_transfer, "nnL", source, target,
                                          (long long)s->num_computed);
    if (res == NULL) return -1;
    double seconds = PyFloat_AsDouble(res);
    Py_DECREF(res);
    if (seconds == -1.0 && PyErr_Occurred()) return -1;
    s->prefill_instance = source;
    s->kv_transfer_s = seconds;
    Event arrival = {L->now + seconds, EVENT_KV_ARRIVAL, (int64_t)target,
                     L->ids[s->request], slot};
    return push_event(L, arrival);
}

/* ------------------------------------------------------------------ the loop (engine.py) */

/* Run until every request is served (returns 1) or `max_steps` more steps ended (returns 0). */
static int run_events(Loop *L, int64_t max_steps) {
    int64_t stop_at = L->steps + max_steps;
    while (L->next_request < L->num_requests || L->events_len > 0) {
        if (L->steps >= stop_at) return 0;
        Py_ssize_t r = L->next_request;
        if (r < L->num_requests && (L->events_len == 0 || L->arrival[r] <= L->events[0].time)) {
            /* Every request arriving at this instant is queued before any instance starts. */
            double t = L->arrival[r];
            if (t > L->now) L->now = t;
            Py_ssize_t touched = 0;
            L->epoch++;
            while (r < L->num_requests && L->arrival[r] == t) {
                Py_ssize_t index = route(L, &L->entry, r);
                if (index < 0 || add_request(L, index, r, -1) < 0) return -1;
                if (L->inst[index].touched_epoch != L->epoch) {
                    L->inst[index].touched_epoch = L->epoch;
                    L->touched[touched++] = index;
                }
                r++;
            }
            L->next_request = r;
            for (Py_ssize_t k = 0; k < touched; k++)
                if (try_start(L, L->touched[k]) < 0) return -1;
            continue;
        }
        Event e = pop_event(L);
        L->now = e.time;
        Py_ssize_t index = (Py_ssize_t)e.instance;
        if (e.kind == EVENT_STEP_END) {
            Py_ssize_t handed_off = end_step(L, index, (Py_ssize_t)e.arg);
            if (handed_off < 0) return -1;
            for (Py_ssize_t k = 0; k < handed_off; k++)
                if (start_transfer(L, index, L->handoffs[k]) < 0) return -1;
            L->steps++;
        } else if (e.kind == EVENT_KV_ARRIVAL) {
            if (add_request(L, index, L->seqs[e.slot].request, e.slot) < 0) return -1;
        } /* a wake-up: just try to start */
        if (try_start(L, index) < 0) return -1;
    }
    return 1;
}

/* ------------------------------------------------------------------ Python type */

static void pool_free(Pool *P) {
    Py_XDECREF(P->layer_cost);
    Py_XDECREF(P->prefill_cost);
    Py_XDECREF(P->head_cost);
    Py_XDECREF(P->moe_layer_cost);
    Py_XDECREF(P->around_decode);
    Py_XDECREF(P->decode_attention);
    costmap_free(&P->layer_memo);
    costmap_free(&P->prefill_memo);
    costmap_free(&P->head_memo);
    costmap_free(&P->moe_layer_memo);
    costmap_free(&P->around_memo);
    costmap_free(&P->sends_memo);
    Py_XDECREF(P->stage_sends);
    free(P->stage_layers);
    free(P->stage_moe_layers);
    free(P);
}

static void Loop_dealloc(Loop *L) {
    Py_XDECREF(L->kv_transfer);
    if (L->board_obj != NULL) {
        PyBuffer_Release(&L->board_view);
        Py_DECREF(L->board_obj);
    }
    Py_XDECREF(L->entry.draw);
    Py_XDECREF(L->decode.draw);
    free(L->arrival);
    free(L->ids);
    free(L->input_len);
    free(L->output_len);
    for (Py_ssize_t i = 0; i < L->seqs_cap; i++) {
        free(L->seqs[i].kv.blocks);
        free(L->seqs[i].kv.nodes);
        free(L->seqs[i].kv.keys);
    }
    free(L->seqs);
    free(L->free_slots);
    free(L->hit_nodes);
    free(L->hit_blocks);
    Py_XDECREF(L->block_keys);
    /* Instances first: each reads its pool's pp, and pool_free frees the pool. */
    for (Py_ssize_t i = 0; i < L->num_instances; i++) {
        Inst *I = &L->inst[i];
        for (Py_ssize_t k = 0; I->engines != NULL && k < I->pool->pp; k++) {
            free_prefix_cache(I->engines[k].pc);
            free(I->engines[k].waiting);
            free(I->engines[k].running);
            free(I->engines[k].batch_slot);
            free(I->engines[k].batch_tokens);
        }
        free(I->engines);
        free(I->stage_free);
    }
    free(L->inst);
    for (Py_ssize_t i = 0; i < L->num_pools; i++) pool_free(L->pools[i]);
    free(L->pools);
    free(L->stage_time);
    free(L->stage_send);
    free(L->entry.members);
    free(L->decode.members);
    free(L->events);
    free(L->touched);
    free(L->chunk_new);
    free(L->chunk_ctx);
    free(L->handoffs);
    free(L->ended.data);
    free(L->step_rows.data);
    free(L->gaps.data);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

/* Copy a buffer of `count` items of `size` bytes (numpy arrays of the caller's columns). */
static void *copy_column(PyObject *obj, Py_ssize_t size, Py_ssize_t *count, const char *name) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (view.itemsize != size) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_TypeError, "%s: expected contiguous %zd-byte items", name, size);
        return NULL;
    }
    Py_ssize_t n = view.len / size;
    if (*count >= 0 && n != *count) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, *count, n);
        return NULL;
    }
    *count = n;
    void *data = malloc((size_t)(view.len ? view.len : 1));
    if (data == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(data, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return data;
}

static int Loop_init(Loop *L, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"policy", "prefix_caching", "swap", "block_keys", "load_board",
                            "router", "decode_router",
                            "router_draw",
                            "decode_router_draw", "block_size", "max_num_seqs",
                            "max_num_batched_tokens", "max_queue", "request_timeout_s",
                            "record_steps", "kv_transfer", "ids", "arrival_s", "input_len",
                            "output_len", NULL};
    int router, decode_router, record_steps;
    long long block_size, max_num_seqs, max_tokens, max_queue;
    PyObject *kv_transfer, *ids, *arrival, *input_len, *output_len, *entry_draw, *decode_draw;
    PyObject *block_keys;
    if (L->init_called) {
        PyErr_SetString(PyExc_RuntimeError, "Loop.__init__ may run once");
        return -1;
    }
    L->init_called = 1;
    PyObject *board;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ippOOiiOOLLLLdpOOOOO", names, &L->policy,
                                     &L->prefix_caching, &L->swap, &block_keys, &board, &router,
                                     &decode_router,
                                     &entry_draw, &decode_draw,
                                     &block_size, &max_num_seqs, &max_tokens,
                                     &max_queue, &L->request_timeout_s, &record_steps,
                                     &kv_transfer, &ids, &arrival, &input_len, &output_len))
        return -1;
    if (block_size < 1 || max_num_seqs < 1 || max_tokens < 1 || router < ROUTER_ROUND_ROBIN ||
        router > ROUTER_PYTHON || decode_router < ROUTER_ROUND_ROBIN ||
        decode_router > ROUTER_PYTHON || L->policy < POLICY_VLLM || L->policy > POLICY_STATIC) {
        PyErr_SetString(PyExc_ValueError, "Loop: invalid configuration");
        return -1;
    }
    if (L->prefix_caching && block_keys == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Loop: prefix caching needs block_keys");
        return -1;
    }
    Py_INCREF(block_keys);
    L->block_keys = block_keys;
    if (board != Py_None) {
        if (PyObject_GetBuffer(board, &L->board_view,
                               PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            return -1;
        Py_INCREF(board);
        L->board_obj = board;
        const char *fmt = L->board_view.format;
        size_t fmt_len = fmt != NULL ? strlen(fmt) : 0;
        if (L->board_view.itemsize != (Py_ssize_t)sizeof(int64_t) || fmt_len == 0 ||
            strchr("lq", fmt[fmt_len - 1]) == NULL) {
            PyErr_SetString(PyExc_TypeError, "load_board: expected an int64 array");
            return -1;
        }
        L->board = L->board_view.buf;
    }
    L->entry.kind = router;
    L->decode.kind = decode_router;
    Py_INCREF(entry_draw);
    Py_INCREF(decode_draw);
    L->entry.draw = entry_draw;
    L->decode.draw = decode_draw;
    L->block_size = block_size;
    L->max_num_seqs = max_num_seqs;
    L->max_num_batched_tokens = max_tokens;
    L->max_queue = max_queue;
    L->record_steps = record_steps;
    Py_INCREF(kv_transfer);
    L->kv_transfer = kv_transfer;
    Py_ssize_t count = -1;
    if ((L->ids = copy_column(ids, sizeof(int64_t), &count, "ids")) == NULL ||
        (L->arrival = copy_column(arrival, sizeof(double), &count, "arrival_s")) == NULL ||
        (L->input_len = copy_column(input_len, sizeof(int64_t), &count, "input_len")) == NULL ||
        (L->output_len = copy_column(output_len, sizeof(int64_t), &count, "output_len")) == NULL)
        return -1;
    L->num_requests = count;
    for (Py_ssize_t r = 0; r < count; r++) {
        /* NaN fails both tests (a lone NaN arrival would make run() spin forever). */
        if (!(L->arrival[r] == L->arrival[r]) ||
            (r > 0 && !(L->arrival[r] >= L->arrival[r - 1]))) {
            PyErr_SetString(PyExc_ValueError, "arrival_s must be in arrival order");
            return -1;
        }
    }
    L->chunk_new = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    L->chunk_ctx = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    L->handoffs = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    if (!L->chunk_new || !L->chunk_ctx || !L->handoffs) {
        PyErr_NoMemory();
        return -1;
    }
    L->ready = 1;
    return 0;
}

/* A tuple of `count` ints as a new array (stage layer counts). */
static int64_t *int_tuple(PyObject *obj, Py_ssize_t count, const char *name) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != count) {
        PyErr_Format(PyExc_ValueError, "add_pool: %s must be a tuple of %zd ints", name, count);
        return NULL;
    }
    int64_t *values = malloc(sizeof(int64_t) * (size_t)count);
    if (values == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        values[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(obj, i));
        if (values[i] == -1 && PyErr_Occurred()) {
            free(values);
            return NULL;
        }
    }
    return values;
}

static int init_engine(Engine *E, int64_t blocks, int64_t max_num_seqs, int prefix_caching) {
    memset(E, 0, sizeof(Engine));
    E->free_blocks = blocks;
    if (prefix_caching) {
        E->pc = new_prefix_cache(blocks);
        if (E->pc == NULL || PyErr_Occurred()) return -1;
    }
    E->running = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    E->batch_slot = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    E->batch_tokens = malloc(sizeof(int64_t) * (size_t)max_num_seqs);
    if (!E->running || !E->batch_slot || !E->batch_tokens) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *Loop_add_pool(Loop *L, PyObject *args, PyObject *kwargs) {
    static char *names[] = {
        "role", "count", "pipeline_parallel", "engine_blocks", "stage_layers",
        "stage_moe_layers", "stage_sends", "num_layers", "step_overhead", "seq_overhead",
        "q_size", "kv_size", "kv_bytes", "act_bytes", "decode_flops", "bandwidth", "launch",
        "layer_cost", "prefill_cost", "head_cost", "attention", "mla_heads", "mla_latent",
        "mla_kv_lora", "around_decode", "decode_attention", "num_moe_layers", "moe_layer_cost",
        "tp", "peak_flops", "memory_bandwidth", "idle_w", "dynamic_w", "swap_blocks",
        "link_bandwidth", "link_latency_s", "block_bytes", NULL};
    if (!L->ready || L->started) {
        PyErr_SetString(PyExc_RuntimeError, "add_pool: after __init__ and before run");
        return NULL;
    }
    Pool *P = calloc(1, sizeof(Pool));
    if (P == NULL) return PyErr_NoMemory();
    Py_ssize_t count, pp;
    long long engine_blocks, mla_heads, mla_latent, mla_kv_lora, num_moe_layers, swap_blocks;
    PyObject *layers_obj, *moe_layers_obj, *sends_fn, *layer_fn, *prefill_fn, *head_fn;
    PyObject *around_fn, *attention_fn, *moe_fn;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "innLOOOddddddddddOOOiLLLOOLOdddddLddd", names, &P->role, &count, &pp,
            &engine_blocks, &layers_obj, &moe_layers_obj, &sends_fn, &P->num_layers,
            &P->step_overhead, &P->seq_overhead, &P->q_size, &P->kv_size, &P->kv_bytes,
            &P->act_bytes, &P->decode_flops, &P->bandwidth, &P->launch, &layer_fn, &prefill_fn,
            &head_fn, &P->attention, &mla_heads, &mla_latent, &mla_kv_lora, &around_fn,
            &attention_fn, &num_moe_layers, &moe_fn, &P->tp, &P->peak_flops, &P->mem_bandwidth,
            &P->idle_w, &P->dynamic_w, &swap_blocks, &P->link_bandwidth, &P->link_latency_s,
            &P->block_bytes)) {
        free(P);
        return NULL;
    }
    if (count < 1 || pp < 1 || pp > 254 || engine_blocks < 1 || P->role < ROLE_MIXED ||
        P->role > ROLE_DECODE || P->attention < ATTENTION_GQA || P->attention > ATTENTION_OPS ||
        (P->attention == ATTENTION_MLA && around_fn == Py_None) ||
        (P->attention == ATTENTION_OPS && attention_fn == Py_None) || num_moe_layers < 0 ||
        (num_moe_layers > 0 && moe_fn == Py_None) || (pp > 1 && sends_fn == Py_None) ||
        swap_blocks < 0 || (L->swap && !(P->link_bandwidth > 0))) {
        free(P);
        PyErr_SetString(PyExc_ValueError, "add_pool: invalid pool");
        return NULL;
    }
    P->pp = pp;
    P->swap_blocks = swap_blocks;
    P->engine_blocks = engine_blocks;
    P->num_blocks = engine_blocks * pp;
    P->mla_heads = mla_heads;
    P->mla_latent = mla_latent;
    P->mla_kv_lora = mla_kv_lora;
    P->num_moe_layers = num_moe_layers;
    Py_INCREF(sends_fn);
    Py_INCREF(layer_fn);
    Py_INCREF(prefill_fn);
    Py_INCREF(head_fn);
    Py_INCREF(around_fn);
    Py_INCREF(attention_fn);
    Py_INCREF(moe_fn);
    P->decode_attention = attention_fn;
    P->stage_sends = sends_fn;
    P->layer_cost = layer_fn;
    P->prefill_cost = prefill_fn;
    P->head_cost = head_fn;
    P->around_decode = around_fn;
    P->moe_layer_cost = moe_fn;
    Pool **pools = realloc(L->pools, sizeof(Pool *) * (size_t)(L->num_pools + 1));
    if (pools == NULL) {
        pool_free(P);
        return PyErr_NoMemory();
    }
    L->pools = pools;
    L->pools[L->num_pools++] = P; /* owned by the loop from here on */
    if ((P->stage_layers = int_tuple(layers_obj, pp, "stage_layers")) == NULL ||
        (P->stage_moe_layers = int_tuple(moe_layers_obj, pp, "stage_moe_layers")) == NULL)
        return NULL;
    if (costmap_init(&P->layer_memo, 1024) < 0 || costmap_init(&P->prefill_memo, 1024) < 0 ||
        costmap_init(&P->head_memo, 1024) < 0 || costmap_init(&P->moe_layer_memo, 64) < 0 ||
        costmap_init(&P->around_memo, 64) < 0 || costmap_init(&P->sends_memo, 64) < 0)
        return NULL;
    if (pp > L->max_pp) {
        double *stage_time = realloc(L->stage_time, sizeof(double) * (size_t)pp);
        if (stage_time == NULL) return PyErr_NoMemory();
        L->stage_time = stage_time;
        double *stage_send = realloc(L->stage_send, sizeof(double) * (size_t)pp);
        if (stage_send == NULL) return PyErr_NoMemory();
        L->stage_send = stage_send;
        L->max_pp = pp;
    }
    Inst *inst = realloc(L->inst, sizeof(Inst) * (size_t)(L->num_instances + count));
    if (inst == NULL) return PyErr_NoMemory();
    L->inst = inst;
    for (Py_ssize_t i = 0; i < count; i++) {
        Inst *I = &L->inst[L->num_instances];
        memset(I, 0, sizeof(Inst));
        L->num_instances++;
        I->pool = P;
        I->wake_at = -1.0;
        I->engines = calloc((size_t)pp, sizeof(Engine));
        I->stage_free = calloc((size_t)pp, sizeof(double));
        if (!I->engines || !I->stage_free) return PyErr_NoMemory();
        for (Py_ssize_t k = 0; k < pp; k++)
            if (init_engine(&I->engines[k], engine_blocks, L->max_num_seqs, L->prefix_caching) < 0)
                return NULL;
        for (Py_ssize_t k = 0; k < pp; k++) I->engines[k].swap_capacity = P->swap_blocks;
    }
    return PyLong_FromSsize_t(L->num_pools - 1);
}

/* Cluster.__init__: arrivals go to the mixed and prefill instances, hand-offs to decode. */
static int build_routers(Loop *L) {
    L->entry.members = malloc(sizeof(Py_ssize_t) * (size_t)(L->num_instances + 1));
    L->decode.members = malloc(sizeof(Py_ssize_t) * (size_t)(L->num_instances + 1));
    L->touched = malloc(sizeof(Py_ssize_t) * (size_t)(L->num_instances + 1));
    if (!L->entry.members || !L->decode.members || !L->touched) {
        PyErr_NoMemory();
        return -1;
    }
    int prefill = 0;
    for (Py_ssize_t i = 0; i < L->num_instances; i++) {
        int role = L->inst[i].pool->role;
        prefill |= role == ROLE_PREFILL;
        if (role == ROLE_DECODE)
            L->decode.members[L->decode.count++] = i;
        else
            L->entry.members[L->entry.count++] = i;
    }
    int needs_draw = (L->entry.kind >= ROUTER_RANDOM && L->entry.draw == Py_None) ||
                     (prefill && L->decode.kind >= ROUTER_RANDOM && L->decode.draw == Py_None);
    if (L->board != NULL &&
        L->board_view.len < (Py_ssize_t)sizeof(int64_t) * L->num_instances) {
        PyErr_SetString(PyExc_ValueError, "load_board: one entry per instance expected");
        return -1;
    }
    if (L->entry.count == 0 || (prefill && L->decode.count == 0) ||
        (prefill && L->kv_transfer == Py_None) || needs_draw) {
        PyErr_SetString(PyExc_ValueError, "Loop: no instance takes arrivals or hand-offs");
        return -1;
    }
    return 0;
}

static PyObject *Loop_run(Loop *L, PyObject *args) {
    long long max_steps;
    if (!PyArg_ParseTuple(args, "L", &max_steps)) return NULL;
    if (!L->ready || L->num_instances == 0) {
        PyErr_SetString(PyExc_RuntimeError, "Loop: initialise it and add pools first");
        return NULL;
    }
    if (!L->started) {
        if (build_routers(L) < 0) return NULL;
        L->started = 1;
    }
    int done = run_events(L, max_steps);
    if (done < 0) return NULL;
    return PyBool_FromLong(done);
}

static PyObject *Loop_take_ended(Loop *L, PyObject *unused) { return buffer_take(&L->ended); }
static PyObject *Loop_take_steps(Loop *L, PyObject *unused) { return buffer_take(&L->step_rows); }
static PyObject *Loop_take_gaps(Loop *L, PyObject *unused) { return buffer_take(&L->gaps); }

static Inst *instance_at(Loop *L, Py_ssize_t i) {
    if (i < 0 || i >= L->num_instances) {
        PyErr_SetString(PyExc_IndexError, "instance index out of range");
        return NULL;
    }
    return &L->inst[i];
}

static PyObject *Loop_instance_totals(Loop *L, PyObject *args) {
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "n", &i)) return NULL;
    Inst *I = instance_at(L, i);
    if (I == NULL) return NULL;
    return Py_BuildValue(
        "{s:L,s:d,s:d,s:d,s:L,s:L,s:L,s:L}", "iterations", (long long)I->iterations, "busy_s",
        I->busy_s, "busy_device_s", I->busy_device_s, "energy_busy_j", I->energy_busy_j,
        "prefill_tokens", (long long)I->prefill_tokens, "decode_tokens",
        (long long)I->decode_tokens, "kv_peak_blocks", (long long)I->kv_peak_blocks,
        "max_batch_size", (long long)I->max_batch_size);
}

static PyObject *Loop_engine_counters(Loop *L, PyObject *args) {
    Py_ssize_t i, k;
    if (!PyArg_ParseTuple(args, "nn", &i, &k)) return NULL;
    Inst *I = instance_at(L, i);
    if (I == NULL) return NULL;
    if (k < 0 || k >= I->pool->pp) {
        PyErr_SetString(PyExc_IndexError, "virtual engine index out of range");
        return NULL;
    }
    const Engine *E = &I->engines[k];
    return Py_BuildValue(
        "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:d}", "preemptions", (long long)E->preemptions,
        "recomputed_tokens", (long long)E->recomputed_tokens, "evicted_blocks",
        (long long)(E->pc != NULL ? E->pc->evicted : 0), "swap_fallbacks",
        (long long)E->swap_fallbacks, "swap_used", (long long)E->swap_used, "swap_peak",
        (long long)E->swap_peak, "to_device", (long long)E->to_device, "to_host",
        (long long)E->to_host, "transfer_s", E->transfer_s);
}

static PyObject *Loop_memo_counts(Loop *L, PyObject *args) {
    Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "n", &i)) return NULL;
    if (i < 0 || i >= L->num_pools) {
        PyErr_SetString(PyExc_IndexError, "pool index out of range");
        return NULL;
    }
    return Py_BuildValue("(LL)", (long long)L->pools[i]->cache_lookups,
                         (long long)L->pools[i]->cache_hits);
}

static PyObject *Loop_get_now(Loop *L, void *closure) { return PyFloat_FromDouble(L->now); }
static PyObject *Loop_get_steps(Loop *L, void *closure) { return PyLong_FromLongLong(L->steps); }

static PyMethodDef Loop_methods[] = {
    {"add_pool", (PyCFunction)(void (*)(void))Loop_add_pool, METH_VARARGS | METH_KEYWORDS,
     "add_pool(role, count, num_blocks, timer terms..., power terms...) -> pool index: "
     "`count` more instances (numbered on from the last ones) sharing one timer."},
    {"run", (PyCFunction)Loop_run, METH_VARARGS,
     "run(max_steps) -> bool: serve until done (True) or max_steps more steps ended (False)."},
    {"take_ended", (PyCFunction)Loop_take_ended, METH_NOARGS,
     "Rows of the requests that ended since the last call, as bytes."},
    {"take_steps", (PyCFunction)Loop_take_steps, METH_NOARGS,
     "Step rows (metrics/steps.py layout) since the last call, as bytes."},
    {"take_gaps", (PyCFunction)Loop_take_gaps, METH_NOARGS,
     "(gap, count) runs of inter-token gaps since the last call, as bytes."},
    {"instance_totals", (PyCFunction)Loop_instance_totals, METH_VARARGS,
     "instance_totals(i) -> dict: an instance's step totals."},
    {"engine_counters", (PyCFunction)Loop_engine_counters, METH_VARARGS,
     "engine_counters(i, k) -> dict: scheduler, prefix-cache and swap counters of instance i's "
     "engine k."},
    {"memo_counts", (PyCFunction)Loop_memo_counts, METH_VARARGS,
     "memo_counts(pool) -> (lookups, hits) the loop answered from its copy of the memo."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Loop_getset[] = {
    {"now", (getter)Loop_get_now, NULL, "simulated time of the last event", NULL},
    {"steps", (getter)Loop_get_steps, NULL, "engine steps ended so far", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "llmservingsim.native._loop.Loop",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The engine's event loop for the common configuration (see loop.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
    .tp_getset = Loop_getset,
};

static struct PyModuleDef loop_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_loop",
    .m_doc = "Compiled event loop of llmservingsim (see loop.c).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__loop(void) {
    if (PyType_Ready(&LoopType) < 0) return NULL;
    PyObject *m = PyModule_Create(&loop_module);
    if (m == NULL) return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0 ||
        PyModule_AddIntConstant(m, "VERSION", KERNEL_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "ENDED_ROW_SIZE", (long)sizeof(EndedRow)) < 0 ||
        PyModule_AddIntConstant(m, "STEP_ROW_SIZE", (long)sizeof(StepRow)) < 0 ||
        PyModule_AddIntConstant(m, "GAP_RUN_SIZE", (long)sizeof(GapRun)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
