# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test docs bench clean

$(VENV)/.installed: pyproject.toml Makefile
	@# WordNet 3.0 for the WordNet similarity: Debian's files (nltk.download('wordnet') is the online alternative)
	@test -f /usr/share/wordnet/data.noun || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; } || \
		echo "note: WordNet not installed (run apt-get install wordnet-base wordnet-sense-index as root); WordNet tests will skip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,onnx,hf,openvino,lite,docs]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/metavote demo

# The deploy tests run twice: on this CPU's own kernels, then as an AVX2 CPU runs them (oneDNN, in PyTorch and in
# OpenVINO, and PyTorch's own vector kernels capped to AVX2; ONNX Runtime has no such switch), so a developer on
# one CPU type sees what another type would show.
DEPLOY_TESTS := tests/test_deploy.py tests/test_openvino.py tests/test_int8.py tests/test_latency.py

test: $(VENV)/.installed
	$(BIN)/pytest
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(BIN)/pytest $(DEPLOY_TESTS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict   # the site, into site/ (about 5 s); not -q: it hides strict's warnings

# The documentation site (mkdocs.yml: MkDocs, Material, mkdocstrings) into site/, strict: a broken link, a missing
# anchor or an API reference that does not resolve fails the build. `make test` builds it too.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/main-tables/step_cost.py
	$(BIN)/python benchmarks/builders/ifp_profile.py
	$(BIN)/python benchmarks/builders/zoo_throughput.py
	$(BIN)/python benchmarks/deployment/inference.py

clean:
	rm -rf $(VENV) runs .pytest_cache site
