#!/usr/bin/env bash
# The README's first command: set everything up on a fresh Debian machine (as root) and run
# the bot's whole loop locally with no Slack account. `scripts/demo.sh --console` lets you
# type the slash commands yourself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/services.sh start
scripts/build-demo-image.sh demo/web 1:ok 2:ok 3:errors
exec .venv/bin/python scripts/demo.py "$@"
