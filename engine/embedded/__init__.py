"""The embedded Qdrant-compatible gRPC endpoint, served from qdrant-edge (Qdrant's storage engine in-process).

Entry points (imported from their modules, so `import engine.embedded` stays cheap for every other command):
    engine.embedded.server.EmbeddedServer    in-process server (tests, benchmarks)
    engine.embedded.process.EmbeddedProcess  the same as a child process that tests can kill and restart
    engine.embedded.cli                      `reembed serve-embedded`
    engine.embedded.faults.FaultSpec         the --faults grammar
"""
