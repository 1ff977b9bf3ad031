# `make demo` and `make test` create .venv on first use (pinned by constraints.txt), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-kernels venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,pretrained,onnx,timm]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attrpreserve demo --quick --out runs/quick

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# The numerics tests (`-m numerics`: two computations of the same floats compared, quantized
# kernels) again under other kernel paths than this CPU's best, so a tolerance that only holds
# for one CPU's kernels fails here too: ATen's vectorized kernels at AVX2 and without SIMD
# ("default"), then oneDNN (convolutions, int8) capped at AVX2. Each run must pass. (A level
# above the CPU's, e.g. avx512 on an AVX2 machine, cannot be forced: ATen falls back.)
test-kernels: $(STAMP)
	env -u ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY=avx2 $(VENV)/bin/python -m pytest -m numerics
	env -u ONEDNN_MAX_CPU_ISA ATEN_CPU_CAPABILITY=default $(VENV)/bin/python -m pytest -m numerics
	env -u ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA=AVX2 $(VENV)/bin/python -m pytest -m numerics

clean:
	rm -rf runs build *.egg-info
