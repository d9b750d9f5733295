#!/usr/bin/env bash
# Creates the Python venv used by the PyTorch parity scripts in this directory.
#
# Location: ${CAI_PARITY_VENV:-$HOME/.cache/cai-parity-venv}. Idempotent: an existing venv
# whose torch/timm versions match and that has onnx and onnxruntime is left as it is.
#
# torch from the registry is the CUDA build even for CPU use (~4 GB venv, ~70 s warm);
# timm and torchvision are installed with --no-deps to keep the torch pin.
set -euo pipefail

VENV="${CAI_PARITY_VENV:-$HOME/.cache/cai-parity-venv}"
TORCH_VERSION="${CAI_PARITY_TORCH:-2.15.0}"
TIMM_VERSION="0.4.12"
TORCHVISION_VERSION="${CAI_PARITY_TORCHVISION:-0.29.2}"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" "$TIMM_VERSION" <<'PYEOF' 2>/dev/null
import sys, torch, timm, onnx, onnxruntime
ok = torch.__version__.split("+")[0] == sys.argv[1] and timm.__version__ == sys.argv[2]
sys.exit(0 if ok else 1)
PYEOF
then
    echo "parity venv ready: $VENV"
    exit 0
fi

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" numpy
"$VENV/bin/python" -m pip install --quiet --no-deps "timm==$TIMM_VERSION" "torchvision==$TORCHVISION_VERSION"
# timm 0.4.12 imports torchvision, which imports PIL.
"$VENV/bin/python" -m pip install --quiet pillow
# The ONNX fixtures (scripts/onnx/make_fixtures.py) export with onnx and check against
# ONNX Runtime; .ci/run makes them right after this script.
"$VENV/bin/python" -m pip install --quiet onnx onnxruntime
"$VENV/bin/python" -c "import torch, timm, torchvision, onnx, onnxruntime; print('torch', torch.__version__, 'timm', timm.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__)"
echo "parity venv ready: $VENV"
