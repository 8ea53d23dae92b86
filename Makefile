# Two commands matter: `make serve` and `make test`. Both set everything up
# from a fresh clone (virtualenv, install, generated gRPC code) first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/nba/v1/*.proto)
GEN    := $(patsubst proto/%.proto,%_pb2.py,$(PROTOS))

.PHONY: serve test proto install clean bench-learning

serve: $(GEN)
	mkdir -p var
	$(BIN)/nba serve

test: $(GEN)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# Learning quality and speed against uniform, river and Vowpal Wabbit (the `bench` extra).
bench-learning: $(GEN)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python loadtests/bench_learning.py

proto: $(GEN)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

nba/v1/%_pb2.py: proto/nba/v1/%.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $<

clean:
	rm -rf $(VENV) nba/v1/*_pb2*.py nba/v1/*_pb2.pyi *.egg-info
