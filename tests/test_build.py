"""The optimised build's wrapper (scripts/with-pgo.sh) hands rustc the
committed PGO profile: an absolute path to the unpacked bytes of
pgo/segmint.profdata.gz, after the caller's own flags, and only when the
rustc building is the one that took the profile."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKED = ROOT / "pgo" / "segmint.profdata.gz"
SEPARATOR = "\x1f"  # Cargo's separator in CARGO_ENCODED_RUSTFLAGS


def _rustc(tmp_path: Path, version: str) -> Path:
    """A stand-in rustc that prints ``version`` for ``rustc -V``."""
    fake = tmp_path / "rustc"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' '{version}'\n")
    fake.chmod(0o755)
    return fake


def _env(tmp_path: Path, target: str) -> dict[str, str]:
    """This process's environment without Cargo's flag and target variables,
    building with a stand-in for the rustc that took the profile (whatever
    rustc this machine has) into ``target``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC", "CARGO_TARGET_DIR")
    }
    recorded = (ROOT / "pgo" / "rustc-version").read_text().strip()
    return env | {"RUSTC": str(_rustc(tmp_path, recorded)), "CARGO_TARGET_DIR": target}


def _wrapped(
    env_changes: dict[str, str], tmp_path: Path, cwd: Path = ROOT
) -> tuple[list[str], str, str]:
    """The encoded flags, RUSTFLAGS (or "unset") and stderr the wrapper leaves
    to the command it runs."""
    env = _env(tmp_path, str(tmp_path / "target")) | env_changes
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "with-pgo.sh"),
            "sh",
            "-c",
            'printf "%s\\n%s" "${CARGO_ENCODED_RUSTFLAGS-}" "${RUSTFLAGS-unset}"',
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    encoded, rustflags = done.stdout.split("\n")
    return [f for f in encoded.split(SEPARATOR) if f], rustflags, done.stderr


def _profile_path(flags: list[str]) -> Path:
    use = [f for f in flags if f.startswith("-Cprofile-use=")]
    assert len(use) == 1, flags
    return Path(use[0].removeprefix("-Cprofile-use="))


def test_the_profile_is_passed_unpacked_by_absolute_path(tmp_path: Path) -> None:
    flags, rustflags, _ = _wrapped({}, tmp_path)
    path = _profile_path(flags)
    assert path.is_absolute()
    assert path.parent == tmp_path / "target" / "pgo"
    assert path.read_bytes() == gzip.decompress(PACKED.read_bytes())
    # LLVM's indexed profile format starts with this magic number.
    assert path.read_bytes()[:8] == b"\xfflprofi\x81"
    assert "-Cllvm-args=-no-pgo-warn-mismatch" in flags
    assert rustflags == "unset"


def test_the_callers_flags_come_first(tmp_path: Path) -> None:
    flags, rustflags, _ = _wrapped({"RUSTFLAGS": "-Ctarget-cpu=x86-64-v2  -Cdebuginfo=1"}, tmp_path)
    assert flags[:2] == ["-Ctarget-cpu=x86-64-v2", "-Cdebuginfo=1"]
    _profile_path(flags)
    assert rustflags == "unset"  # else Cargo would read it instead
    given = SEPARATOR.join(["-Cdebuginfo=1", "-Cremark=a b"])
    flags, _, _ = _wrapped({"CARGO_ENCODED_RUSTFLAGS": given}, tmp_path)
    assert flags[:2] == ["-Cdebuginfo=1", "-Cremark=a b"]
    _profile_path(flags)
    # Set but empty, it still wins over RUSTFLAGS, as in Cargo.
    flags, _, _ = _wrapped({"CARGO_ENCODED_RUSTFLAGS": "", "RUSTFLAGS": "-Cdebuginfo=1"}, tmp_path)
    assert flags[0].startswith("-Cprofile-use=")


def test_a_relative_target_dir_or_one_with_spaces_gives_an_absolute_path(
    tmp_path: Path,
) -> None:
    flags, _, _ = _wrapped({"CARGO_TARGET_DIR": "rel target"}, tmp_path, cwd=tmp_path)
    path = _profile_path(flags)
    assert path == tmp_path / "rel target" / "pgo" / path.name
    assert path.is_file()


def test_builds_started_together_each_find_the_profile(tmp_path: Path) -> None:
    env = _env(tmp_path, str(tmp_path / "t"))
    unpacked = f"segmint-{hashlib.sha256(PACKED.read_bytes()).hexdigest()[:16]}.profdata"
    # Each "build" checks that the profile it was given exists.
    check = (
        'p=$(printf "%s" "$CARGO_ENCODED_RUSTFLAGS" | tr "\\037" "\\n"'
        ' | sed -n "s/^-Cprofile-use=//p"); test -f "$p"'
    )
    for _ in range(5):
        subprocess.run(["rm", "-rf", str(tmp_path / "t")], check=True)
        runs = [
            subprocess.Popen([str(ROOT / "scripts" / "with-pgo.sh"), "sh", "-c", check], env=env)
            for _ in range(6)
        ]
        assert [r.wait(timeout=60) for r in runs] == [0] * 6
        assert [p.name for p in (tmp_path / "t" / "pgo").iterdir()] == [unpacked]


def test_make_pgo_builds_instrumented_through_the_same_flags(tmp_path: Path) -> None:
    flags, rustflags, _ = _wrapped(
        {"SEGMINT_PGO_GENERATE": "/tmp/raw dir", "RUSTFLAGS": "-Cdebuginfo=1"}, tmp_path
    )
    assert flags == ["-Cdebuginfo=1", "-Cprofile-generate=/tmp/raw dir"]
    assert rustflags == "unset"


def test_another_rustc_builds_without_the_profile(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    fake = _rustc(other, "rustc 0.0.1 (0000000 2020-01-01)")
    flags, rustflags, stderr = _wrapped(
        {"RUSTC": str(fake), "RUSTFLAGS": "-Cdebuginfo=1"}, tmp_path
    )
    assert flags == []
    assert rustflags == "-Cdebuginfo=1"
    assert "building without it" in stderr
    assert "rustc 0.0.1" in stderr
