"""histo_bench.optional: finding optional modules without importing them, and hiding one during an import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from histo_bench.errors import MissingDependencyError
from histo_bench.optional import has_module, hidden, require


def test_a_hidden_module_fails_to_import_inside_the_block_and_imports_after_it():
    code = ("import sys\n"
            "from histo_bench.optional import hidden\n"
            "with hidden('json'):\n"
            "    try:\n"
            "        import json\n"
            "        print('imported')\n"
            "    except ImportError:\n"
            "        print('hidden')\n"
            "import json\n"
            "print(json.dumps([1]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["hidden", "[1]"]


def test_hidden_leaves_an_already_imported_module_alone():
    import json

    with hidden("json"):
        import json as again
    assert again is json and sys.modules["json"] is json


def test_zarr_imported_with_cupy_hidden_still_reads_and_writes(tmp_path):
    code = ("import sys\n"
            "from histo_bench.optional import hidden\n"
            "with hidden('cupy'):\n"
            "    import zarr, numpy as np\n"
            f"a = zarr.create_array({str(tmp_path / 'a.zarr')!r}, shape=(4,), dtype='int16', chunks=(2,))\n"
            "a[:] = np.arange(4)\n"
            "print('cupy' in sys.modules, a[:].tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(maxsplit=1) == ["False", "[0, 1, 2, 3]\n"]


def test_require_names_what_to_install():
    assert not has_module("no_such_module_xyz")
    with pytest.raises(MissingDependencyError, match=r"no_such_module_xyz not installed \(pip install xyz\)"):
        require("no_such_module_xyz", "xyz")
