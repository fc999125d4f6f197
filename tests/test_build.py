"""The compiled kernel: what it says of its build, run-time dispatch, and rebuilds on new flags."""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

from asgd import store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not store.available(), reason="asgd._pstore not built")

# Instructions beyond baseline x86-64: EVEX-encoded (AVX-512: a 0x62 prefix,
# zmm or mask registers, xmm/ymm16-31) and VEX-encoded (AVX/AVX2: 0xc4/0xc5).
AVX512_OPERAND = re.compile(r"%zmm\d|%k[0-7]\b|\{%k[0-7]\}|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}")
LEGACY_PREFIXES = {"26", "2e", "36", "3e", "64", "65", "66", "67", "f2", "f3"}


def instruction_sets_by_function(path: str) -> dict[str, set[str]]:
    """{function: {"avx512", "avx"}} for each function of a shared object using them."""
    out = subprocess.run(["objdump", "-d", "--insn-width=16", path], capture_output=True,
                         text=True, check=True).stdout
    found, function = {}, None
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 3 or function is None:
            continue
        raw = parts[1].split()
        while raw and raw[0] in LEGACY_PREFIXES:
            raw = raw[1:]
        if not raw:
            continue
        if raw[0] == "62" or AVX512_OPERAND.search(parts[2]):
            found.setdefault(function, set()).add("avx512")
        elif raw[0] in ("c4", "c5"):
            found.setdefault(function, set()).add("avx")
    return found


def test_build_info_names_the_flags_the_clones_and_the_dispatched_one():
    info = store.build_info()
    assert set(info) == {"compiler", "cflags", "vector", "clones", "dispatch"}
    assert "-O" in info["cflags"] and info["vector"] in ("avx512f", "avx2", "sse2", "none")
    if info["clones"] == "none":
        assert info["dispatch"] == "none"
        return
    assert info["clones"] == "avx512f,avx2,default"
    with open("/proc/cpuinfo") as f:
        cpu = set(next(line for line in f if line.startswith("flags")).split())
    expected = "avx512f" if "avx512f" in cpu else "avx2" if "avx2" in cpu else "default"
    assert info["dispatch"] == expected


@pytest.mark.skipif(shutil.which("objdump") is None or platform.machine() != "x86_64",
                    reason="needs objdump on x86-64")
def test_vector_instructions_appear_only_inside_the_dispatched_clones():
    info = store.build_info()
    if info["clones"] == "none":
        pytest.skip(f"a build without clones (cflags {info['cflags']})")
    from asgd import _pstore
    found = instruction_sets_by_function(_pstore.__file__)
    outside = {f: sets for f, sets in found.items()
               if ("avx512" in sets and ".avx512f" not in f)
               or ("avx" in sets and not re.search(r"\.(avx2|avx512f)\b", f))}
    assert not outside, f"vector code outside the clones of {_pstore.__file__}: {outside}"
    # the detector sees the AVX-512 clones, so an empty result above means something
    assert any(".avx512f" in f and "avx512" in sets for f, sets in found.items())


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_a_leftover_build_folder_is_rebuilt_when_the_flags_change(tmp_path):
    pytest.importorskip("setuptools")
    lib, temp = tmp_path / "lib", tmp_path / "temp"

    def build(cflags: str) -> bytes:
        env = dict(os.environ, ASGD_PSTORE_CFLAGS=cflags)
        proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-b", str(lib),
                               "-t", str(temp)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (so,) = (lib / "asgd").glob("_pstore*.so")
        assert so.name.startswith("_pstore.abi3")  # the stable ABI, one file for every Python
        return so.read_bytes()

    assert b"cflags=-std=c11 -O1 -fopenmp-simd;" in build("-std=c11 -O1 -fopenmp-simd")
    assert b"cflags=-std=c11 -O2 -fopenmp-simd;" in build("-std=c11 -O2 -fopenmp-simd")
