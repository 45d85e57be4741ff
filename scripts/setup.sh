#!/usr/bin/env bash
# Install what immune needs on Debian 12, as root: safe to run again (it skips what is there).
#
#   - Debian packages: docker.io, redis-server, busybox-static, prometheus, haproxy,
#     docker-registry (the CNCF distribution registry) and apache2-utils (its htpasswd), and
#     curl, make
#   - Debian's own redis-server, prometheus, haproxy and docker-registry services stopped and
#     disabled:
#     scripts/services.sh and the test fixtures run their own, on loopback
#   - .venv with Python >= 3.11 and `pip install -e '.[dev]'`
#
# Environment: PYTHON (default python3), VENV (default .venv in the repository).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python3}
venv=${VENV:-$root/.venv}
log=$root/var/log/setup.log

mkdir -p "$(dirname "$log")"
: >"$log"

say() { echo "setup: $*"; }

die() {
    echo "setup: error: $*" >&2
    exit 1
}

# run DESCRIPTION COMMAND...: run quietly into the log; on failure show its tail and stop.
run() {
    local what=$1
    shift
    echo "+ $*" >>"$log"
    if ! "$@" >>"$log" 2>&1; then
        echo "--- last lines of $log:" >&2
        tail -n 25 "$log" >&2
        die "$what failed (full log: $log)"
    fi
}

installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# --- Python: checked first, so an unusable one stops us before anything is installed.
command -v "$python" >/dev/null ||
    die "$python not found: immune needs Python >= 3.11 (Debian 12: apt-get install python3 python3-venv)"
python_path=$(command -v "$python")
python_version=$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    die "$python_path is Python $python_version; immune needs Python >= 3.11. Debian 12 ships 3.11;" \
        "on an older system install a newer Python and run again with PYTHON=/path/to/python3.11"
fi

# --- Debian packages.
packages=()
for package in docker.io redis-server busybox-static; do
    installed "$package" || packages+=("$package")
done
command -v curl >/dev/null || packages+=(curl)
command -v make >/dev/null || packages+=(make)  # `make bench`, `make lint`, … (optional shortcuts)
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian's own python3 has venv and ensurepip in a separate package.
    case $(readlink -f "$python_path") in
        /usr/bin/python3*) installed python3-venv || packages+=(python3-venv) ;;
        *) die "$python_path has no venv/ensurepip module: install it, or use PYTHON=..." ;;
    esac
fi
slim_packages=()
for package in prometheus haproxy docker-registry apache2-utils; do
    installed "$package" || slim_packages+=("$package")
done

if ((${#packages[@]} + ${#slim_packages[@]} > 0)); then
    [[ $(id -u) -eq 0 ]] ||
        die "missing Debian packages (${packages[*]} ${slim_packages[*]}): run this script as root"
    say "installing ${packages[*]} ${slim_packages[*]} (log $log)"
    # Keep the packages' services from starting during installation; we run our own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# written by immune scripts/setup.sh during apt-get install\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_options=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef
        -o Dpkg::Options::=--force-confold)
    run "apt-get update" apt-get update -q
    if ((${#packages[@]} > 0)); then
        run "apt-get install ${packages[*]}" apt-get install "${apt_options[@]}" "${packages[@]}"
    fi
    if ((${#slim_packages[@]} > 0)); then
        run "apt-get install ${slim_packages[*]}" \
            apt-get install "${apt_options[@]}" --no-install-recommends "${slim_packages[@]}"
    fi
    if [[ -f /usr/sbin/policy-rc.d ]] && grep -q 'immune scripts/setup.sh' /usr/sbin/policy-rc.d; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
else
    say "Debian packages: all present"
fi

for command in docker dockerd redis-server redis-cli prometheus haproxy docker-registry htpasswd curl; do
    command -v "$command" >/dev/null || die "$command not found after installing the packages"
done
[[ -x /bin/busybox ]] || die "/bin/busybox not found after installing busybox-static"

# --- Debian's redis-server, prometheus and docker-registry services would squat ports 6379,
# 9090 and 5000, and haproxy's default config holds a stats socket of its own.
for service in redis-server prometheus haproxy docker-registry; do
    if [[ -d /run/systemd/system ]]; then
        if systemctl is-active --quiet "$service" || systemctl is-enabled --quiet "$service" 2>/dev/null; then
            [[ $(id -u) -eq 0 ]] || die "Debian's $service service is enabled: run as root to disable it"
            run "systemctl disable --now $service" systemctl disable --now "$service"
            say "stopped and disabled Debian's $service service (ours run from scripts/)"
        fi
    elif [[ -x /etc/init.d/$service ]]; then
        if /etc/init.d/"$service" status >/dev/null 2>&1; then
            [[ $(id -u) -eq 0 ]] || die "Debian's $service service runs: run as root to stop it"
            run "stopping Debian's $service service" /etc/init.d/"$service" stop
            say "stopped Debian's $service service (ours run from scripts/)"
        fi
        # Not started at boot either, where a SysV init runs (quietly nothing elsewhere).
        if [[ $(id -u) -eq 0 ]] && command -v update-rc.d >/dev/null; then
            update-rc.d "$service" disable >>"$log" 2>&1 || true
        fi
    fi
done

# --- The virtualenv.
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    :
else
    [[ ! -e $venv ]] || say "recreating $venv (broken or too old)"
    rm -rf "$venv"
    run "creating the virtualenv $venv" "$python" -m venv "$venv"
fi
# pip runs again only when pyproject.toml or the venv's Python changed since the last success.
stamp=$venv/.immune-setup-stamp
wanted=$({
    sha256sum "$root/pyproject.toml"
    "$venv/bin/python" --version
} | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$wanted" ]] && "$venv/bin/python" -m pip show -q immune >/dev/null 2>&1; then
    say "virtualenv $venv: up to date"
else
    run "pip install -e '.[dev]'" "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$root[dev]"
    echo "$wanted" >"$stamp"
    say "virtualenv $venv: installed immune and its dev dependencies ($("$venv/bin/python" --version))"
fi
say "done"
