#!/usr/bin/env bash
# The README's first command: set everything up on a fresh Debian machine (as root) and run
# the bot's whole loop locally with no Slack account. `scripts/demo.sh --console` lets you
# type the slash commands yourself.
#
# The demo's three versions are built as CI would build them (OCI labels: a commit, its
# source, the build time) and pushed to the local registry (127.0.0.1:15000, started by
# scripts/services.sh); the engine's own copies are dropped, so the bot resolves each tag to
# its digest and pulls it from the registry, as it would from CI's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly REGISTRY=127.0.0.1:15000
readonly IMAGE=$REGISTRY/demo/web
readonly SOURCE=https://github.com/example/immune-demo-web

scripts/setup.sh
scripts/services.sh start
for spec in 1:ok 2:ok 3:errors; do
    version=${spec%%:*}
    # A stand-in for the commit CI built the version from (the same one every run).
    revision=$(printf 'immune demo web %s' "$version" | sha1sum | cut -c1-40)
    scripts/build-demo-image.sh --revision "$revision" --source "$SOURCE" "$IMAGE" "$spec"
    docker push -q "$IMAGE:$version" >/dev/null
    docker rmi "$IMAGE:$version" >/dev/null
    echo "pushed $IMAGE:$version (commit ${revision:0:7}) to the registry"
done
exec .venv/bin/python scripts/demo.py --image "$IMAGE" "$@"
