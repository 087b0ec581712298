#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating and installing it first when
# needed. Idempotent: the install runs only when .venv is missing or pyproject.toml / the extras
# changed since the last install.
#
#   bash scripts/in_venv.sh latentvla --help
#   LATENTVLA_EXTRAS=dev,wandb bash scripts/in_venv.sh latentvla train ...
#
# torch==2.13.0 is installed first (a CPU wheel on machines without a GPU); set
# LATENTVLA_TORCH="" to keep a torch you installed yourself (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LATENTVLA_EXTRAS:-dev,libero,metaworld,lerobot}
TORCH_SPEC=${LATENTVLA_TORCH-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[in_venv] creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.latentvla-install-stamp
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$EXTRAS torch=$TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[in_venv] installing latentvla[$EXTRAS] into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  if [ -n "$TORCH_SPEC" ]; then
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
  fi
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
case ",$EXTRAS," in
  *,libero,*|*,metaworld,*) bash scripts/system_deps.sh ;;  # headless GL for the simulators
esac
export PATH="$PWD/.venv/bin:$PATH"
export VIRTUAL_ENV="$PWD/.venv"
exec "$@"
