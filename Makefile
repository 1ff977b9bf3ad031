# `make demo` and `make test` create .venv on first use (pinned by constraints.txt), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test,pretrained]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attrpreserve demo --quick --out runs/quick

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf runs build *.egg-info
