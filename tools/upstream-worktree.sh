#!/usr/bin/env bash
# Make a git work tree of the pinned upstream with ggml-patches/ applied as commits, for
# editing the patch series:
#   tools/upstream-worktree.sh DIR          # DIR must not exist
#   cd DIR; ...edit...; git commit -a -m "sd.cpp: what the hook does"
#   git format-patch --zero-commit --no-signature -o ../bonsai-sd/ggml-patches pristine
# Patches are named NNNN-*.patch and applied in name order by cmake/upstream.cmake.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: $0 DIR}
[ -e "$dir" ] && { echo "$dir exists" >&2; exit 1; }

sha=998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282
cache=${BONSAI_SD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bonsai-sd}
archive=${BONSAI_SD_UPSTREAM_ARCHIVE:-$cache/stable_diffusion_cpp_python-0.4.7.tar.gz}
if [ ! -f "$archive" ]; then
    mkdir -p "$cache"
    python3 -m pip download --no-deps --no-build-isolation --no-binary stable-diffusion-cpp-python \
        stable-diffusion-cpp-python==0.4.7 -d "$cache"
fi
echo "$sha  $archive" | sha256sum -c --quiet -

mkdir -p "$dir"
tar -xzf "$archive" -C "$dir" --strip-components=3 stable_diffusion_cpp_python-0.4.7/vendor/stable-diffusion.cpp
cd "$dir"
git init -q
git add -A
git -c user.name=upstream -c user.email=upstream@invalid commit -q -m "pinned upstream: stable-diffusion.cpp 60477fd5, ggml 404fcb9d (stable-diffusion-cpp-python 0.4.7)"
git tag pristine
shopt -s nullglob
patches=("$here"/ggml-patches/*.patch)
# --keep-cr: some upstream files (src/convert.cpp) have CRLF line endings
[ ${#patches[@]} -gt 0 ] && git am -q --keep-cr "${patches[@]}"
echo "upstream work tree ready in $dir ($(git rev-list --count pristine..HEAD) patches applied)"
