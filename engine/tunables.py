"""Every tunable default in one place, each with its reason. Config values override these per job."""

# --- writes -------------------------------------------------------------------------------------------------------
UPLOAD_BATCH = 256  # Qdrant bulk-upload guidance: 64-256; bench/dataplane.py here: 256 cuts server CPU/point ~8 % vs 128.
UPLOAD_BATCH_MIN, UPLOAD_BATCH_MAX = 64, 256  # the same guidance, enforced on the config.
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # Qdrant caps requests at 32 MiB; stay well under so headers and retries fit.
UPLOAD_REQUESTS_IN_FLIGHT = 4  # measured here: 1 in flight halves throughput, 2-4 saturate the server, 8 adds nothing.

# --- reads --------------------------------------------------------------------------------------------------------
SCROLL_PAGE = 1024  # measured here: pages of 256 cost Ray ~20 % in per-task overhead; 1024 amortises it.
SHARDS = 8  # a few parallel streams per the guide; more shards than workers keeps every worker busy at the tail.
SAMPLE_IDS_PER_SHARD = 32  # sampled ids per shard boundary; enough to balance ranges within a few percent.

# --- flow control -------------------------------------------------------------------------------------------------
PAGES_IN_FLIGHT = 4  # per stage: enough to hide one stage's latency behind another, bounded so memory stays flat.
EMBED_ACTOR_CONCURRENCY = 2  # calls per GPU embedding actor: page k+1 is tokenized and batch-planned while page k
# runs the model (one page at a time, under the embedder's lock); at MiniLM's GPU speed a page of 1024 texts tokenizes
# in about as long as it embeds (estimate: ~25 ms each), so without it tokenization sits on the critical path. Not yet
# measured on a GPU. CPU actors take one call at a time: there the tokenizer would only take cores from the model.

# --- retries ------------------------------------------------------------------------------------------------------
RETRY_MAX_ATTEMPTS = 8  # with exponential backoff this covers ~30 s of server trouble per request.
RETRY_BASE_DELAY_S = 0.2  # first backoff; doubled each attempt, full jitter.
RETRY_MAX_DELAY_S = 10.0  # cap per sleep so a throttled server is re-probed at least this often.
RETRY_DEADLINE_S = 300.0  # give up on one request after this long, whatever the attempt count.
RPC_TIMEOUT_S = 60.0  # one RPC; a wait=true upsert of 256 points finishes far sooner on a healthy server.

# --- embedding ----------------------------------------------------------------------------------------------------
TOKEN_BUDGET_CPU = 2048  # padded tokens per CPU forward; bench/embed.py here: 1024-4096 within 2 %, 8192 4 % slower.
TOKEN_BUDGET_GPU = 65536  # padded tokens per forward on GPU; keeps an H100 saturated for BERT-base-sized models.
MAX_BATCH_TEXTS = 512  # upper bound on texts per forward whatever the budget, bounds activation memory for short texts.
BATCH_OVERHEAD_TOKENS_CPU = 64  # fixed cost of one forward in padded-token equivalents (measured ≈ 45-65 here).
BATCH_OVERHEAD_TOKENS_GPU = 4096  # estimate: ~100 kernel launches (~0.5 ms) at millions of tokens/s; not yet measured.

# --- checkpoints --------------------------------------------------------------------------------------------------
CHECKPOINT_COLLECTION = "_reembed"  # progress lives in the target Qdrant so a resubmitted job on a new head resumes.
CHECKPOINT_MIN_INTERVAL_S = 1.0  # a crash redoes in-flight pages + <= 1 s of commits; saving every commit cost the server ~10 %.

# --- strategies ---------------------------------------------------------------------------------------------------
DEFERRED_INDEXING_THRESHOLD_KB = 2**40  # "very high" (guide): no segment reaches it, so no HNSW builds during a load.
INDEX_GREEN_TIMEOUT_S = 6 * 3600.0  # building HNSW for 100M+ vectors takes hours; after this, report and stop waiting.
