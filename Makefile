# The few commands a person needs; each is a script, so CI (.ci/run) runs the same ones.
.PHONY: setup services services-stop services-status test lint format demo bench

setup:            ## install Debian packages and .venv (as root)
	scripts/setup.sh

services:         ## start dockerd (if needed), Redis :6379 and Prometheus :9090 on loopback
	scripts/services.sh start

services-stop:    ## stop what `make services` started
	scripts/services.sh stop

services-status:
	scripts/services.sh status

test:             ## all tests; pass options with ARGS='-m "not docker"'
	scripts/test.sh $(ARGS)

lint:             ## what CI checks besides the tests
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

format:
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

demo:             ## the end-to-end demo (scripts/demo.sh)
	scripts/demo.sh

bench:
	.venv/bin/python -m bench
