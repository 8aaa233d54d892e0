# Every target that runs project code depends on the virtual environment, so a fresh clone needs
# nothing but `make test`. torch goes in first: any other torch requirement pulls a multi-GB CUDA
# build, and the project's own `torch>=` range is then already satisfied. The project's install
# names the same torch again, so that no dependency's requirement can make the resolver replace it.
PYTHON ?= python3
TORCH ?= 2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-torch-$(TORCH)
ARGS ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: install test test-slow lint format bench experiment sweep demo leaderboard

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH)"
	$(BIN)/python -m pip install --quiet "torch==$(TORCH)" -e ".[dev]"
	rm -f $(VENV)/.installed-torch-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/mednext bench $(ARGS)

experiment: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make experiment NAME=<experiment> [ARGS='key=value ...']"; \
		echo "experiments:"; $(BIN)/mednext train --list; exit 2; }
	$(BIN)/mednext train $(NAME) $(ARGS)

sweep: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make sweep NAME=<sweep> [ARGS='key=value ... --parallel N']"; \
		echo "sweeps:"; $(BIN)/mednext sweep --list; exit 2; }
	$(BIN)/mednext sweep $(NAME) $(ARGS)

demo: $(STAMP)
	$(BIN)/mednext train brain_demo_mednext_s $(ARGS)

leaderboard: $(STAMP)
	$(BIN)/mednext leaderboard $(ARGS)
