"""Every tunable default in one place, each with its reason. Config values override these per job."""

# --- writes -------------------------------------------------------------------------------------------------------
UPLOAD_BATCH = 256  # Qdrant bulk-upload guidance: 64-256; bench/dataplane.py: 256 cuts server CPU/point ~8 % vs 128.
UPLOAD_BATCH_MIN, UPLOAD_BATCH_MAX = 64, 256  # the same guidance, enforced on the config.
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # a write request's size: Qdrant's gRPC takes any size (REST caps at 32 MiB), but
# requests of a few MB keep each write's latency and a retry's cost small.
UPLOAD_REQUESTS_IN_FLIGHT = 4  # measured here: 1 in flight halves throughput, 2-4 saturate the server, 8 adds nothing.

# --- write pacing (engine/qdrant/pacing.py) -----------------------------------------------------------------------
WRITE_LATENCY_TARGET_MS = 2000.0  # a wait=true write of 256 points takes tens of ms on a healthy server (~50 us/point
# measured here); seconds mean its update queue is backing up behind indexing or other writers: back off.
PACING_MAX_IN_FLIGHT = 16  # per writer: 2-4 saturate one server (measured here); a sharded cluster spreads a writer's
# requests over its shards, so allow a few per shard, but no more: more in flight only queues on the server.
PACING_MIN_IN_FLIGHT = 1  # the floor of the in-flight window; below it a learned points/s rate paces the writer.
PACING_DECREASE_FACTOR = 0.7  # multiplicative decrease: CUBIC's beta (RFC 9438) keeps ~85 % of a saw-tooth's peak
# where halving keeps ~75 %; the rate-limit simulation in tests/unit/test_pacing.py holds >= 0.8 of the limit with it.
PACING_PROBE_COOLDOWN_S = 5.0  # least time between two decreases for a slow source search p99: the rolling p99 needs
# that long to show the effect of the last decrease, else one slow spell would drive the window to its floor.
PACING_RATE_INCREASE_PER_S = 0.025  # a refused writer also paces by a learned rate: cut to 0.7 of the refused rate,
# it climbs back in ~12 s, so even at a few requests per second refusals stay a few percent of requests.
PACING_RATE_CALM_S = 30.0  # a learned rate past the one that was refused, with no cut for this long: the limit may be
# gone. Longer than a climb back to the refused rate (~12 s) plus the drain of the tokens saved meanwhile (~12 s).
PACING_RATE_DOUBLING_S = 5.0  # once calm, the learned rate doubles every 5 s: from the slowest (one request per 10 s)
# to 100k points/s in about a minute.
PACING_SLOWEST_REQUEST_INTERVAL_S = 10.0  # the rate is never cut below one request per this long: slow, not stalled.
PACING_RATE_WINDOW_S = 10.0  # points/s reported for the progress line: long enough to smooth a page's burst of writes.
PACING_BURST_S = 1.0  # the points/s cap's token bucket holds this long of tokens: a page's requests go out together
# but the cap holds over any few seconds.
SEARCH_PROBE_SAMPLES = 100  # the rolling p99 of source searches: the 99th percentile of 100 is the slowest but one.
SEARCH_PROBE_WINDOW_S = 60.0  # samples older than this are dropped, so the p99 follows the server's current state.
SEARCH_PROBE_TIMEOUT_S = 5.0  # a probe search slower than this counts as this slow (and a failed one too).
SEARCH_PROBE_LIMIT = 10  # the probe asks what an application asks: the top 10, no payload.

# --- reads --------------------------------------------------------------------------------------------------------
GET_BATCH = 256  # ids per Get when points are read by id (a multi-shard source): replies of a few MB at most.
SCROLL_PAGE = 1024  # measured here: pages of 256 cost Ray ~20 % in per-task overhead; 1024 amortises it.
SHARDS = 8  # a few parallel streams per the guide; more shards than workers keeps every worker busy at the tail.
SAMPLE_IDS_PER_SHARD = 32  # sampled ids per shard boundary; enough to balance ranges within a few percent.

# --- flow control -------------------------------------------------------------------------------------------------
PAGES_IN_FLIGHT = 4  # per stage: enough to hide one stage's latency behind another, bounded so memory stays flat.
EMBED_ACTOR_CONCURRENCY = 2  # calls per GPU embedding actor: page k+1 is tokenized and batch-planned while page k
# runs the model (one page at a time, under the embedder's lock); at MiniLM's GPU speed a page of 1024 texts tokenizes
# in about as long as it embeds (estimate: ~25 ms each), so without it tokenization sits on the critical path. Not yet
# measured on a GPU. CPU actors take one call at a time: there the tokenizer would only take cores from the model.

# --- lanes --------------------------------------------------------------------------------------------------------
LANE_READERS = 1  # readers per lane: a page read (~10 ms for 1024 points) is far shorter than embedding it on a GPU.
LANE_WRITERS = 1  # writers per lane: one asyncio writer keeps UPLOAD_REQUESTS_IN_FLIGHT requests going.
LANE_GPU_EMBED_CPUS = 1.0  # a GPU embedding actor's CPU: tokenisation and the CUDA launch thread.
LANE_CPU_IO_CPUS = 0.25  # a reader's/writer's reservation on a CPU lane: they mostly wait on the network, and the
# model's threads use the lane's whole budget (bench/e2e.py: I/O took ~5 % of the machine beside MiniLM on 2 cores).
LANE_MIN_IO_CPUS = 0.1  # below this a reader or writer would starve on a node whose model keeps every core busy.
LANE_STREAMS = 2  # leases a lane reads at once: reads are sequential within a lease, a second keeps the lane fed.
LANE_REPORT_MIN_S = 0.2  # a lane holds its report at least this long after the previous one, so each report carries
# many pages' acks: the driver's cost is per report (bench/coordinator.py), not per page.
LANE_START_TIMEOUT_S = 600.0  # a lane's actors placed and its model loaded; a big model on a cold node takes minutes.
LANE_START_DEATHS_MAX = 3  # lanes in a row that died while starting on one node before it is rested: a node that
# cannot start a worker (a dead agent, a broken install) would otherwise take a new lane every second, forever
LANE_NODE_REST_S = 60.0  # how long such a node gets no new lane; after it, one more try (it may have recovered)
RESOURCE_WAIT_S = 600.0  # pipeline.min_gpus: how long a job waits for the cluster (an autoscaler) to offer them.
STEAL_MIN_PAGES = 4  # a range is split for an idle lane only when more than this many pages are left: below that
# the split costs more (a new lease, its first read) than the pages it moves.
SEARCH_PROBE_INTERVAL_S = 1.0  # one probe search a second: enough for a p99 over a minute, one query on the server.
SPLIT_SAMPLE = 8192  # ids sampled to find split points: resolution of ~1/8192 of the collection per sampled id.

# --- retries ------------------------------------------------------------------------------------------------------
RETRY_MAX_ATTEMPTS = 8  # with exponential backoff this covers ~30 s of server trouble per request.
RETRY_BASE_DELAY_S = 0.2  # first backoff; doubled each attempt, full jitter.
RETRY_MAX_DELAY_S = 10.0  # cap per sleep so a throttled server is re-probed at least this often.
RETRY_DEADLINE_S = 300.0  # give up on one request after this long, whatever the attempt count.
RPC_TIMEOUT_S = 60.0  # one RPC; a wait=true upsert of 256 points finishes far sooner on a healthy server.
RETRY_OUTAGE_BUDGET_S = 900.0  # per request, UNAVAILABLE/DEADLINE_EXCEEDED/rate limits are waited out this long
# (whatever max_attempts says): a rolling restart of a Qdrant cluster or a node recovering its WAL takes minutes, and a
# job of days should pause through it, not die; 15 min is long enough for that and short enough to surface a real loss.
OUTAGE_ANNOUNCE_AFTER_S = 5.0  # the driver's own calls (setup, index restore, cutover) say what they wait for once a
# wait passes this (a blip below it is routine and the debug log has it) ...
OUTAGE_ANNOUNCE_EVERY_S = 30.0  # ... and again this often, so a long outage is visible without flooding the log.

# --- embedding ----------------------------------------------------------------------------------------------------
TOKEN_BUDGET_CPU = 2048  # padded tokens per CPU forward; bench/embed.py here: 1024-4096 within 2 %, 8192 4 % slower.
TOKEN_BUDGET_GPU = 65536  # padded tokens per forward on GPU; keeps an H100 saturated for BERT-base-sized models.
MAX_BATCH_TEXTS = 512  # upper bound on texts per forward whatever the budget, bounds activation memory for short texts.
BATCH_OVERHEAD_TOKENS_CPU = 64  # fixed cost of one forward in padded-token equivalents (measured ≈ 45-65 here).
BATCH_OVERHEAD_TOKENS_GPU = 4096  # estimate: ~100 kernel launches (~0.5 ms) at millions of tokens/s; not yet measured.

# --- checkpoints --------------------------------------------------------------------------------------------------
CHECKPOINT_COLLECTION = "_reembed"  # progress lives in the target Qdrant so a resubmitted job on a new head resumes.
CHECKPOINT_MIN_INTERVAL_S = 1.0  # a crash redoes in-flight pages + <= 1 s of commits; saving every commit cost the
# server ~10 % of its CPU.

# --- strategies ---------------------------------------------------------------------------------------------------
DEFERRED_INDEXING_THRESHOLD_KB = 2**40  # "very high" (guide): no segment reaches it, so no HNSW builds during a load.
INDEX_GREEN_TIMEOUT_S = 6 * 3600.0  # building HNSW for 100M+ vectors takes hours; after this, report and stop waiting.
SIDE_BY_SIDE_ON_DISK_BYTES = 4096  # side_by_side keeps a dense vector of >= 4 KiB per point (1024+ float32 dims, e.g.
# 1024-d bge-large/e5-large, 1536-d OpenAI) on disk while both models live, as the guide asks for "large vectors": at
# that size the vector is ~95 % of a point's RAM (HNSW links at m=16 are ~140 B), so a second model doubles the
# collection's RAM (~400 GiB per 100M points each). Smaller ones (384/768-d) add under 3 KiB/point; for them page-cache
# reads during search would cost more than the RAM they save. Multivectors go on disk whatever their size.
SMALL_COLLECTION_BYTES = 25 * 10**6  # the guide: "for small datasets (<25MB), re-indexing from source is faster than
# using the migration tool"; `reembed plan` gives that advice below this many bytes of source data.

# --- verify -------------------------------------------------------------------------------------------------------
POINT_BATCH = 256  # sampled points fetched (and re-embedded) per request: Get replies of a few MB at most.
SAMPLE_CHUNK = 100_000  # ids per random-sample request: ~2 MB replies, far below the 64 MiB channel limit.
COUNT_STREAMS = 4  # shards counted in parallel by the default thread map: 2-4 streams saturate a server (Qdrant's
# bulk guidance); a Ray map runs one task per shard instead.
SHOW_IDS = 20  # ids named per problem in messages and reports: enough to find the pattern, bounded memory.
SHOW_IN_DETAIL = 5  # ids quoted in one check's one-line detail.
NDCG_AT = 10  # Qdrant's search-quality guidance measures nDCG at 10.
SPAN_WORDS = 32  # self-retrieval query: the first half of a text's words, at most this many (a short query).
QUERY_SEED = 20240601  # the reservoir of query points is reproducible for the same sample.
FUSION_PREFETCH = 50  # candidates per side of a hybrid query before RRF: deep enough that a point ranked well by one
# side only still reaches the fused top 10, small enough to stay one request per side (Qdrant's hybrid examples use
# 20-100).
RRF_K = 2  # Qdrant's default RRF constant (lib/segment/src/common/score_fusion.rs DEFAULT_RRF_K): sent explicitly so
# the fused ranking does not depend on a server's default.
COPY_RTOL, COPY_ATOL = 1e-6, 1e-7  # a copied vector is the source's bytes; a cosine collection renormalises on insert
# (lib/segment/src/spaces/simple.rs CosineMetric::preprocess), which can move the last float32 bit, no more.
RAY_MAP_CPUS = 0.25  # a count-parity task mostly waits on the network: a quarter CPU lets 4 run per core beside lanes.
RAY_MAP_IN_FLIGHT = 16  # tasks in flight per map: a few per node of a small cluster; bounded so the driver holds
# at most this many results before it consumes them.
REMOTE_EMBED_CPUS = 1.0  # the remote embedder's CPU: tokenisation and the CUDA launch thread (as a lane's embedder).

# --- doctor -------------------------------------------------------------------------------------------------------
DOCTOR_NODE_TIMEOUT_S = 300.0  # a node's whole check: a first model download from the hub takes minutes; a node that
# has not answered by then would not start a lane either.
DOCTOR_MIN_FREE_GPU_FRACTION = 0.5  # a GPU with less free memory than this is used by another process: the lane's
# model and its token-budget batches would compete with it for memory (out-of-memory mid-run) and for compute.
