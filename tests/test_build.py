"""The optimised build's wrapper (scripts/with-pgo.sh) hands rustc the
committed PGO profile: an absolute path to the unpacked bytes of
pgo/segmint.profdata.gz, named by their checksum so a new profile rebuilds."""

from __future__ import annotations

import gzip
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKED = ROOT / "pgo" / "segmint.profdata.gz"


def _rustflags(extra: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUSTFLAGS"}
    if extra is not None:
        env["RUSTFLAGS"] = extra
    done = subprocess.run(
        [str(ROOT / "scripts" / "with-pgo.sh"), "sh", "-c", 'printf %s "$RUSTFLAGS"'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return shlex.split(done.stdout)


def test_the_profile_is_passed_unpacked_by_absolute_path() -> None:
    flags = _rustflags()
    use = [f for f in flags if f.startswith("-Cprofile-use=")]
    assert len(use) == 1, flags
    path = Path(use[0].removeprefix("-Cprofile-use="))
    assert path.is_absolute()
    assert path.read_bytes() == gzip.decompress(PACKED.read_bytes())
    # LLVM's indexed profile format starts with this magic number.
    assert path.read_bytes()[:8] == b"\xfflprofi\x81"
    assert "-Cllvm-args=-no-pgo-warn-mismatch" in flags


def test_flags_already_set_are_kept() -> None:
    flags = _rustflags("-Ctarget-cpu=x86-64-v2")
    assert flags[0] == "-Ctarget-cpu=x86-64-v2"
    assert any(f.startswith("-Cprofile-use=") for f in flags)
