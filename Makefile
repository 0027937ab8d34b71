# Two commands for a fresh machine: `make run` and `make test`. Both install into .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PROTOS := $(wildcard proto/vecserve/v1/*.proto)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install browser run test test-quick lint proto proto-check buf-lint bench bench-quick bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,openvino,distributed]'
	touch $(STAMP)

# The benchmarks also install the peer vector databases they compare with (the `bench` extra).
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,openvino,distributed,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vecserve serve --http-listen 127.0.0.1:8080

# The web page's tests drive Debian's chromium and chromium-driver: installed with apt-get when missing
# (as root, or through sudo). Without apt-get those tests are skipped, saying why.
browser:
	@command -v chromium >/dev/null && test -x /usr/bin/chromedriver || { \
		if ! command -v apt-get >/dev/null; then \
			echo "no chromium and no apt-get here: the browser tests will be skipped"; \
		elif [ "$$(id -u)" = 0 ]; then \
			apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; \
		elif command -v sudo >/dev/null; then \
			sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium chromium-driver; \
		else \
			echo "chromium is missing: run 'apt-get install chromium chromium-driver' as root" >&2; exit 1; \
		fi; }

test: $(STAMP) browser
	$(PY) -m pytest

test-quick: $(STAMP) browser
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the Python stubs from proto/ (never edit the *_pb2*.py or *_connect.py files by hand):
# messages and gRPC stubs, and the Connect (HTTP/JSON) stubs over the same google.protobuf messages.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto \
		--plugin=protoc-gen-connectrpc=$(VENV)/bin/protoc-gen-connectrpc \
		--connectrpc_out=proto --connectrpc_opt=protobuf=google,io=async $(PROTOS)

proto-check: $(STAMP)
	$(PY) -m pytest tests/test_proto.py -q

# Benchmarks print a table and write bench-results.json; ratios are measured side by side in one run.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --json-out bench-results.json

bench-quick: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --quick --json-out bench-results-quick.json

# Embedding on a CUDA GPU (float16) through gRPC against in-process sentence-transformers, under six
# minutes; on a machine without a GPU it says so and exits 0.
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu_bench --json-out bench-gpu.json

buf-lint:
	cd proto && npx -y @bufbuild/buf lint

clean:
	rm -rf $(VENV) .pytest_cache
