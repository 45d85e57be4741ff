#!/usr/bin/env bash
# Build the demo web service image(s) from demo/Dockerfile, FROM scratch: nothing is pulled.
#
#   scripts/build-demo-image.sh [OPTION]... REPO TAG MODE [TESTS]
#   scripts/build-demo-image.sh [OPTION]... REPO TAG:MODE[:TESTS]...
#   scripts/build-demo-image.sh [OPTION]... REPO --standard
#
# Options: --label KEY=VALUE (more labels); --revision SHA, --source URL, --created TIME (the
# OCI provenance labels, as CI stamps them; --revision without --created: now, UTC).
# REPO may start with a registry host (127.0.0.1:15000/demo/web).
# MODE: ok | errors | unhealthy | crash.  TESTS: pass (default) | fail.
# --standard builds the set the demo and the tests use:
#   1:ok 2:ok 3:errors 4:unhealthy 5:crash 6:ok:fail
# Environment: BUSYBOX (default /bin/busybox, must be static), DOCKER (default: docker on PATH).
set -euo pipefail

readonly STANDARD_SET=(1:ok 2:ok 3:errors 4:unhealthy 5:crash 6:ok:fail)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
busybox=${BUSYBOX:-/bin/busybox}
docker_bin=${DOCKER:-docker}

die() {
    echo "build-demo-image: $*" >&2
    exit 1
}

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

labels=()
revision="" source="" created=""
while [[ $# -gt 0 && $1 == --* && $1 != --standard ]]; do
    case $1 in
        --label)
            [[ $# -ge 2 && $2 == ?*=* ]] || die "--label needs KEY=VALUE"
            labels+=(--label "$2")
            shift 2
            ;;
        --revision | --source | --created)
            [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
            case $1 in
                --revision) revision=$2 ;;
                --source) source=$2 ;;
                --created) created=$2 ;;
            esac
            shift 2
            ;;
        --help | -h) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ $# -ge 2 ]] || usage
repo=$1
shift
# An optional registry host first (`127.0.0.1:15000/`, `registry.example.com/`), then the path.
[[ $repo =~ ^([A-Za-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] ||
    die "invalid repository name '$repo' (an optional host[:port]/, then lower case, digits, '.', '_', '-', '/')"

specs=()
if [[ $1 == --standard ]]; then
    [[ $# -eq 1 ]] || die "--standard takes no other arguments"
    specs=("${STANDARD_SET[@]}")
elif [[ $1 != *:* ]]; then
    [[ $# -ge 2 && $# -le 3 ]] || usage
    specs=("$1:$2:${3:-pass}")
else
    specs=("$@")
fi

# Check every spec before building anything.
for spec in "${specs[@]}"; do
    IFS=: read -r tag mode tests extra <<<"$spec"
    [[ -z ${extra:-} ]] || die "bad spec '$spec' (TAG:MODE[:TESTS])"
    [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag '$tag' in '$spec'"
    case $mode in ok | errors | unhealthy | crash) ;; *)
        die "invalid mode '$mode' in '$spec' (ok|errors|unhealthy|crash)" ;;
    esac
    case ${tests:-pass} in pass | fail) ;; *)
        die "invalid TESTS '$tests' in '$spec' (pass|fail)" ;;
    esac
done

if [[ -n $revision && -z $created ]]; then
    created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
fi

command -v "$docker_bin" >/dev/null || die "'$docker_bin' not found (run scripts/setup.sh)"
[[ -x $busybox ]] || die "$busybox not found: install busybox-static (scripts/setup.sh)"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; a FROM scratch image needs busybox-static"
fi
"$docker_bin" info >/dev/null 2>&1 ||
    die "the Docker engine does not answer (scripts/services.sh start-docker)"

# The build context: demo/Dockerfile and a root filesystem made of demo/rootfs plus busybox.
context=$(mktemp -d "${TMPDIR:-/tmp}/immune-demo-context.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$root/demo/Dockerfile" "$context/Dockerfile"
cp -R "$root/demo/rootfs" "$context/rootfs"
fs=$context/rootfs
mkdir -p "$fs/bin" "$fs/tmp" "$fs/www"
cp "$busybox" "$fs/bin/busybox"
for applet in $("$busybox" --list); do
    [[ -e $fs/bin/$applet ]] || ln -s busybox "$fs/bin/$applet"
done
# /www/{healthz,metrics,index.html} are written at start by the entrypoint, as user 65534.
for file in healthz metrics index.html; do
    ln -s "/tmp/demo/$file" "$fs/www/$file"
done
# Modes do not depend on the checkout's umask or git's file modes.
find "$fs" -type d -exec chmod 0755 {} +
find "$fs" -type f -exec chmod 0644 {} +
chmod 0755 "$fs/bin/busybox" "$fs/usr/local/bin/demo-entrypoint" \
    "$fs/www/cgi-bin/index.cgi" "$fs/tests/run"
chmod 1777 "$fs/tmp"

log=$context/build.log
for spec in "${specs[@]}"; do
    IFS=: read -r tag mode tests _ <<<"$spec"
    tests=${tests:-pass}
    started=$(date +%s%N)
    # The classic builder: Debian's engine has no buildx, and FROM scratch needs nothing more.
    if ! DOCKER_BUILDKIT=0 "$docker_bin" build --quiet --force-rm \
        --build-arg "VERSION=$tag" --build-arg "MODE=$mode" --build-arg "TESTS=$tests" \
        --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" --build-arg "CREATED=$created" \
        ${labels[@]+"${labels[@]}"} --tag "$repo:$tag" "$context" >"$log" 2>&1; then
        cat "$log" >&2
        die "building $repo:$tag failed"
    fi
    elapsed_ms=$((($(date +%s%N) - started) / 1000000))
    printf 'built %s:%s (mode %s, tests %s) in %d.%03d s\n' \
        "$repo" "$tag" "$mode" "$tests" $((elapsed_ms / 1000)) $((elapsed_ms % 1000))
done
