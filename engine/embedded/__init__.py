"""The embedded Qdrant-compatible gRPC endpoint, served from qdrant-edge (Qdrant's storage engine in-process).

Entry points (imported from their modules, so `import engine.embedded` stays cheap for every other command):
    engine.embedded.server.EmbeddedServer    in-process server (tests, benchmarks)
    engine.embedded.process.EmbeddedProcess  the same as a child process that tests can kill and restart
    engine.embedded.cli                      `reembed serve-embedded`
    engine.embedded.faults.FaultSpec         the --faults grammar

Qdrant behaviours emulated, each read in Qdrant's source (cited in the module that emulates it): S shards per
collection routed by Qdrant's hash ring (hash_ring.py, sharding.py) with reads merged across shards (merge.py);
custom sharding with shard keys (sharding.py, catalog.py); strict mode and its rate limiters (strict_mode.py,
rate_limit.py); Yellow while an index builds (indexing.py); refusals and messages (status.py, convert.py); alias
actions applied one by one (catalog.py); multivectors (convert.py, queries.py). Points read from storage are
counted per collection (storage_reads.py); the hooks are listed in server.py.
"""
