# The two commands the README opens with: `make run` (the quick study and its report) and `make test`.
# Each creates .venv and installs what it needs the first time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The shared CIFAR-10 archive when this checkout sits beside it; else MINIMASCOPE_DATA or torchvision's download.
SHARED_DATA := ../shared/data/cifar10-images.tar.gz
DATA := $(if $(wildcard $(SHARED_DATA)),$(abspath $(SHARED_DATA)))

.PHONY: run test bench

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,zoo]'
	touch $@

# The default run downloads nothing: the pretrained arms run when MINIMASCOPE_IMAGENET_WEIGHTS names
# torchvision's resnet18 IMAGENET1K_V1 file, else they are skipped with that reason.
run: $(VENV)/installed
	$(BIN)/minimascope study quick $(if $(DATA),--data $(DATA)) --no-download-weights --out studies/quick

test: $(VENV)/installed
	$(BIN)/ruff check -q src tests benchmarks
	MINIMASCOPE_TEST_DATA=$(DATA) MINIMASCOPE_ARTIFACTS=$(abspath test-artifacts) $(BIN)/python -m pytest -q --durations=15

bench: $(VENV)/installed
	$(BIN)/python benchmarks/train_throughput.py $(if $(DATA),--data $(DATA))
	$(BIN)/python benchmarks/adahessian_step.py
	$(BIN)/python benchmarks/optimizer_step.py
	$(BIN)/python benchmarks/similarity.py
	$(BIN)/python benchmarks/sharpness.py $(if $(DATA),--data $(DATA))
	$(BIN)/python benchmarks/study_overhead.py $(if $(DATA),--data $(DATA))
	$(BIN)/python benchmarks/report.py
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[bench]'
	$(BIN)/python benchmarks/landscape.py $(if $(DATA),--data $(DATA))
