#!/usr/bin/env bash
# On the GPU machine: install the carried wheels, put uebench on the path as it installs
# (uebench, uebench.attacks, uebench.defenses), and run the prepared check into --out.
# Prepared here by scripts/device-prepare.sh; see scripts/device_check.py for what it does.
set -uo pipefail
cd "$(dirname "$0")/.."
site=/tmp/uebench-site
rm -rf "$site" && mkdir -p "$site/uebench"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
cp -r uebench/. "$site/uebench/"                  # the package layout of pyproject.toml, without a build
cp -r attacks "$site/uebench/attacks"
cp -r defenses "$site/uebench/defenses"
# PYTHONSAFEPATH: `python -m` must not put the checkout (whose uebench/ lacks attacks/) before the staged copy
export PYTHONPATH="$site:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
[ -f .device-data/commit ] && export UEBENCH_GIT_COMMIT="$(cat .device-data/commit)"
exec python3 scripts/device_check.py "$@"
