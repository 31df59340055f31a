#!/usr/bin/env bash
# Install the real perf_analyzer (and genai-perf) on Debian 12 without touching the system.
#
# PyPI's `perf-analyzer` resolves to a 0.1.0 placeholder without a binary here; the real 2.60.0
# wheel is tagged manylinux_2_38 and needs glibc 2.38 and GLIBCXX_3.4.32 (Debian 12 has glibc 2.36,
# GCC 12's libstdc++). So (shared/PLATFORM.md):
#   1. download the 2.60.0 wheel for its platform tag (pip download, sha256-pinned) and unzip it;
#   2. download Debian 13 (trixie) libc6, libstdc++6, libgcc-s1, libssl3t64, libzstd1, zlib1g with apt using a
#      private sources list and private state dirs (signatures checked against the system's Debian
#      archive keyring), and unpack them with dpkg-deb -x into a private sysroot (never installed);
#   3. write a wrapper `perf_analyzer` that runs the binary through the sysroot's ld-linux-x86-64.so.2
#      with --library-path (the sysroot first, the system's library dirs after it).
# Unless --no-genai-perf: genai-perf 0.0.16 in its own venv (scripts/genai-perf-requirements.txt;
# it pulls numpy 2, which the project venv must not get), a `genai-perf` wrapper that puts the
# real perf_analyzer first on PATH and runs offline, and a local BPE tokenizer trained on the
# shipped GSM8K questions (genai-perf counts tokens with a Hugging Face tokenizer; the hub is not
# reachable here).
#
# Everything goes under ${PYRAMID_CACHE:-$HOME/.cache/pyramid-moa}/perf_analyzer/ (bin/ holds the
# wrappers; VERSIONS records exactly what was installed); with VENV, bin/perf_analyzer and
# bin/genai-perf are also linked into VENV/bin. Idempotent: a complete install is checked and kept.
#
# usage: scripts/install_perf_analyzer.sh [--no-genai-perf] [--force] [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."

PA_VERSION=2.60.0
PA_WHEEL=perf_analyzer-${PA_VERSION}-py3-none-manylinux_2_38_x86_64.whl
PA_SHA256=23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25
GENAI_PERF_VERSION=0.0.16
DEBIAN_SUITE=trixie
DEBIAN_MIRROR=${PYRAMID_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEBS=(libc6 libstdc++6 libgcc-s1 libssl3t64 libzstd1 zlib1g)

GENAI=1
FORCE=0
VENV=
for arg in "$@"; do
  case "$arg" in
    --no-genai-perf) GENAI=0 ;;
    --force) FORCE=1 ;;
    -h | --help)
      sed -n '2,24p' "$0"
      exit 0
      ;;
    -*)
      echo "error: unknown option $arg" >&2
      exit 2
      ;;
    *) VENV=$arg ;;
  esac
done

CACHE=${PYRAMID_CACHE:-$HOME/.cache/pyramid-moa}/perf_analyzer
BIN=$CACHE/bin
RUNTIME=$CACHE/runtime
PYTHON=${PYTHON:-python3}
if [ -n "$VENV" ] && [ -x "$VENV/bin/python" ]; then
  PYTHON=$VENV/bin/python
fi

log() { echo "install_perf_analyzer: $*"; }
die() {
  echo "install_perf_analyzer: error: $*" >&2
  exit 1
}

[ "$(uname -m)" = x86_64 ] || die "the perf_analyzer wheel is x86_64 only (this is $(uname -m))"
for tool in apt-get dpkg-deb sha256sum; do
  command -v "$tool" > /dev/null || die "$tool not found (needs a Debian-like system)"
done
[ -r "$DEBIAN_KEYRING" ] || die "$DEBIAN_KEYRING not found (apt-get install debian-archive-keyring)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' 2> /dev/null || die "$PYTHON (>= 3.10) not found"
mkdir -p "$CACHE" "$BIN"

pa_ok() {
  [ -f "$RUNTIME/.complete" ] && [ -x "$BIN/perf_analyzer" ] &&
    "$BIN/perf_analyzer" --version 2>&1 | grep -q '^Perf Analyzer Version'
}

install_perf_analyzer() {
  local tmp apt_dir deb
  tmp=$(mktemp -d "$CACHE/.runtime.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
  trap "rm -rf '$tmp'" EXIT

  # 1. The wheel (pinned by version and sha256; kept in wheels/ for the next run).
  mkdir -p "$CACHE/wheels"
  if [ ! -f "$CACHE/wheels/$PA_WHEEL" ] || ! echo "$PA_SHA256  $CACHE/wheels/$PA_WHEEL" | sha256sum -c --quiet - 2> /dev/null; then
    log "downloading $PA_WHEEL"
    printf 'perf-analyzer==%s --hash=sha256:%s\n' "$PA_VERSION" "$PA_SHA256" > "$tmp/req.txt"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
      --python-version 3.11 --require-hashes -r "$tmp/req.txt" -d "$tmp/wheel"
    mv "$tmp/wheel/$PA_WHEEL" "$CACHE/wheels/$PA_WHEEL"
  fi
  "$PYTHON" - "$CACHE/wheels/$PA_WHEEL" "$tmp" << 'PY'
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    data = z.read("perf_analyzer/bin/perf_analyzer")
out = dest / "perf_analyzer"
out.write_bytes(data)
out.chmod(0o755)
PY

  # 2. Debian 13 runtime libraries: private apt state, nothing installed.
  apt_dir=$CACHE/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$tmp/debs" "$tmp/sysroot"
  echo "deb [signed-by=$DEBIAN_KEYRING] $DEBIAN_MIRROR $DEBIAN_SUITE main" > "$apt_dir/sources.list"
  local apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User="$(id -un)" -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0
  )
  log "apt: $DEBIAN_SUITE package lists (private state in $apt_dir)"
  apt-get "${apt_opts[@]}" -q --error-on=any update > "$tmp/apt-update.log" 2>&1 || {
    cat "$tmp/apt-update.log" >&2
    die "apt-get update of $DEBIAN_SUITE failed"
  }
  log "apt: downloading ${DEBS[*]}"
  (cd "$tmp/debs" && apt-get "${apt_opts[@]}" -q download "${DEBS[@]}") > "$tmp/apt-download.log" 2>&1 || {
    cat "$tmp/apt-download.log" >&2
    die "apt-get download failed"
  }
  {
    echo "perf-analyzer $PA_VERSION ($PA_WHEEL, sha256 $PA_SHA256)"
    for deb in "$tmp"/debs/*.deb; do
      dpkg-deb -x "$deb" "$tmp/sysroot"
      echo "debian $DEBIAN_SUITE $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
    done
  } > "$tmp/VERSIONS"
  rm -rf "$tmp/debs"
  [ -x "$tmp/sysroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || die "no ld-linux-x86-64.so.2 in libc6"

  # 3. Swap the new runtime in, then write the wrapper (it resolves its own location).
  rm -rf "$RUNTIME.old"
  if [ -d "$RUNTIME" ]; then mv "$RUNTIME" "$RUNTIME.old"; fi
  mv "$tmp" "$RUNTIME"
  trap - EXIT
  rm -rf "$RUNTIME.old"
  cat > "$BIN/.perf_analyzer.tmp" << 'SH'
#!/bin/sh
# perf_analyzer 2.60 (manylinux_2_38; --version says 0.0.0) through a private Debian 13 glibc/libstdc++: written by
# scripts/install_perf_analyzer.sh; see ../VERSIONS. Nothing here is installed system-wide.
self=$(readlink -f "$0")
root=$(dirname "$(dirname "$self")")/runtime
lib=$root/sysroot/usr/lib/x86_64-linux-gnu
exec "$lib/ld-linux-x86-64.so.2" --argv0 perf_analyzer \
  --library-path "$lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" "$root/perf_analyzer" "$@"
SH
  chmod 755 "$BIN/.perf_analyzer.tmp"
  mv "$BIN/.perf_analyzer.tmp" "$BIN/perf_analyzer"
  "$BIN/perf_analyzer" --version 2>&1 | grep -q '^Perf Analyzer Version' || die "the installed perf_analyzer does not run"
  touch "$RUNTIME/.complete"
}

genai_ok() {
  [ -f "$CACHE/genai-perf/.complete" ] && [ -f "$CACHE/tokenizer/tokenizer.json" ] && [ -x "$BIN/genai-perf" ] &&
    cmp -s scripts/genai-perf-requirements.txt "$CACHE/genai-perf/requirements.txt"
}

install_genai_perf() {
  local venv=$CACHE/genai-perf
  # venvs are not relocatable: build in place; .complete marks a finished one.
  rm -rf "$venv" "$CACHE/tokenizer"
  log "genai-perf $GENAI_PERF_VERSION: own venv in $venv (about 0.9 GB)"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r scripts/genai-perf-requirements.txt
  "$venv/bin/genai-perf" --version | grep -q "$GENAI_PERF_VERSION" || die "genai-perf $GENAI_PERF_VERSION did not install"
  log "tokenizer: byte-level BPE (4096) trained on data/gsm8k/questions.jsonl -> $CACHE/tokenizer"
  "$venv/bin/python" - data/gsm8k/questions.jsonl "$CACHE/tokenizer" << 'PY'
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

texts = [json.loads(line)["question"] for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=4096, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
)
tok.train_from_iterator(texts, trainer)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
fast.save_pretrained(sys.argv[2])
assert fast.decode(fast.encode(texts[0])) == texts[0]
PY
  cat > "$BIN/.genai-perf.tmp" << 'SH'
#!/bin/sh
# genai-perf 0.0.16 from its own venv, with the real perf_analyzer first on PATH and the
# Hugging Face hub off (use --tokenizer ../tokenizer). Written by scripts/install_perf_analyzer.sh.
self=$(readlink -f "$0")
bin=$(dirname "$self")
PATH=$bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 exec "$(dirname "$bin")/genai-perf/bin/genai-perf" "$@"
SH
  chmod 755 "$BIN/.genai-perf.tmp"
  mv "$BIN/.genai-perf.tmp" "$BIN/genai-perf"
  cp scripts/genai-perf-requirements.txt "$venv/requirements.txt"
  touch "$venv/.complete"
}

if [ "$FORCE" = 1 ] || ! pa_ok; then
  install_perf_analyzer
else
  log "perf_analyzer already installed in $RUNTIME"
fi
if [ "$GENAI" = 1 ]; then
  if [ "$FORCE" = 1 ] || ! genai_ok; then
    install_genai_perf
  else
    log "genai-perf already installed in $CACHE/genai-perf"
  fi
  grep -q '^genai-perf ' "$RUNTIME/VERSIONS" || echo "genai-perf $GENAI_PERF_VERSION (own venv, scripts/genai-perf-requirements.txt)" >> "$RUNTIME/VERSIONS"
fi
cp "$RUNTIME/VERSIONS" "$CACHE/VERSIONS"

if [ -n "$VENV" ] && [ -d "$VENV/bin" ]; then
  ln -sfn "$BIN/perf_analyzer" "$VENV/bin/perf_analyzer"
  if [ -x "$BIN/genai-perf" ]; then ln -sfn "$BIN/genai-perf" "$VENV/bin/genai-perf"; fi
fi
log "$("$BIN/perf_analyzer" --version 2>&1 | head -1) -> $BIN/perf_analyzer"
sed 's/^/  /' "$CACHE/VERSIONS"
