#!/usr/bin/env bash
# Install mullama into ./.venv, with the system packages the demo needs (FluidSynth and a General MIDI
# soundfont render the demo corpus; Debian's WordNet is copied where NLTK finds it, for METEOR; --test adds
# Debian's Chromium and its driver, the real browser the web page is tested in).
#   scripts/install.sh          runtime (what `mullama demo` needs)
#   scripts/install.sh --test   runtime + test tools
# MULLAMA_TORCH picks the torch requirement (default: the pinned CPU build, torch==2.13.0;
# on a CUDA machine use e.g. MULLAMA_TORCH="torch==2.13.0" with the CUDA index, or "torch").
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

packages=()
{ command -v fluidsynth >/dev/null && [[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]]; } \
  || packages+=(fluidsynth fluid-soundfont-gm)
[[ -f /usr/share/wordnet/data.noun ]] || packages+=(wordnet-base)
[[ -f /usr/share/wordnet/index.sense ]] || packages+=(wordnet-sense-index)
if [[ -n "$extras" ]]; then
  { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || packages+=(chromium chromium-driver)
fi
if (( ${#packages[@]} )); then
  echo "installing ${packages[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null \
    || { $sudo_cmd apt-get update -q >/dev/null && \
         $sudo_cmd apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in the same command as everything else: an unpinned torch resolves to a multi-GB CUDA build.
.venv/bin/python -m pip install -q "${MULLAMA_TORCH:-torch==2.13.0}" -e ".${extras}"
.venv/bin/mullama eval install-wordnet --source /usr/share/wordnet >/dev/null
echo "mullama installed in .venv ($(.venv/bin/python -c 'import mullama; print(mullama.__version__)'))"
