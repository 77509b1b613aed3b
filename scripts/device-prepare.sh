#!/usr/bin/env bash
# Here, before the device call: what the GPU machine lacks and cannot download, into ignored folders
# of the checkout that the call carries (.whl: wheels for its Python 3.12; .device-data: the CIFAR-10
# subset and the commit being checked). Then, through the device tool:
#   run(command="bash scripts/device-check.sh --out $OUT", carry=[".whl", ".device-data"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
for folder in .whl .device-data; do
    grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done
mkdir -p .whl .device-data
# the packages uebench needs that the machine's image does not hold (its list: the device tool's KINDS.md)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl diffusers==0.42.1 importlib_metadata zipp kornia==0.9.0 kornia_rs==0.2.0
cp ../shared/data/cifar10_subset.npz .device-data/
git rev-parse HEAD > .device-data/commit
du -sh .whl .device-data
