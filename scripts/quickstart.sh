#!/usr/bin/env bash
# README command 1: set everything up, then pre-train a ViT-tiny with DCL on Fashion-MNIST and print
# its kNN accuracy next to the randomly initialised encoder's. Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python fastssl/train.py --config configs/quickstart.yaml "$@"
