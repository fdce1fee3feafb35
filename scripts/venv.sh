# Sourced by the setup, run and test scripts: where the factory's own virtual environment lives.
# Keyed by the Python version and the declared dependencies (pyproject.toml's [project] dependencies and extras),
# in the trajfactory cache, outside the checkout, so clones share it and other edits of pyproject.toml keep it.
_tf_key="$(python3 - <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = json.dumps([project.get("dependencies", []), project.get("optional-dependencies", {})], sort_keys=True)
print("py%d.%d-%s" % (*sys.version_info[:2], hashlib.sha256(deps.encode()).hexdigest()[:12]))
PY
)"
TRAJFACTORY_VENV="${TRAJFACTORY_CACHE:-$HOME/.cache/trajfactory}/venvs/$_tf_key"
TRAJFACTORY_PY="$TRAJFACTORY_VENV/bin/python"
export TRAJFACTORY_VENV TRAJFACTORY_PY
unset _tf_key
