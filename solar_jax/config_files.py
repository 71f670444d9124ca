"""Where the ml_collections config files live, and loading one by name.

The files are in the repository's configs/ (the layout is fixed by the product card), not
inside the package: a source checkout or an editable install finds them beside the
package; anywhere else they are looked up in ./configs of the working dir.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import ml_collections

from solar_jax.errors import SolarError

CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_path(name: str) -> Path:
    """configs/NAME (e.g. 'cpt.py') from the checkout, else from ./configs; one clear error."""
    for folder in (CHECKOUT_CONFIGS, Path.cwd() / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise SolarError(f"config file configs/{name} not found beside the package ({CHECKOUT_CONFIGS}) or in "
                     f"./configs; run from a solar_jax checkout or pass --config=PATH/{name}")


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of configs/NAME."""
    path = config_path(name)
    spec = importlib.util.spec_from_file_location(f"solar_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_key(c: ml_collections.ConfigDict, key: str):
    """c's value at a dotted key ("data.num_builtin")."""
    node = c
    for part in key.split("."):
        node = node[part]
    return node


def set_keys(c: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Sets dotted keys in place ({"mesh.fsdp": 4}); returns c."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = get_key(c, ".".join(parents)) if parents else c
        node[leaf] = value
    return c


def split_list(text: str | Sequence[str]) -> list[str]:
    """'a,b' (or a list) -> ['a', 'b']: how list-valued keys such as model_dir are given."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [s.strip() for s in items if str(s).strip()]


def floats(text: str | float | Sequence[float], what: str) -> list[float]:
    """'0.5' or '0,0.5,1' (or numbers) -> floats; one clear error otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return [float(text)]
    try:
        return [float(v) for v in split_list(text)]
    except ValueError:
        raise SolarError(f"cannot read {what} {text!r}; expected comma-separated numbers") from None
