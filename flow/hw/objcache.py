"""The Verilator runtime's compiled objects, shared between plain builds of the models.

Every Verilator model links the same runtime (``verilated.cpp``, ``verilated_vpi.cpp``,
``verilated_timing.cpp``, ... and cocotb's ``verilator.cpp`` main), compiled again in each build
folder: 16.5 of a plain build's 19 CPU-seconds on this machine (the digits MLP's model itself
took 2.7 s). A build with a cache (:class:`~flow.hw.rtlsim.RtlSim` ``objects``) runs two more
commands around make:

- ``seed`` (after Verilator wrote the makefiles): make's dry run gives the command of every
  object compiled from a source outside the build folder; each is keyed by that command line,
  the compiler's version, Verilator's and cocotb's versions and the source's content; the cached
  ones are copied into the build folder with their dependency files (newer than every source:
  make keeps them), and the keys are written beside them;
- ``store`` (after make): the objects compiled in this build go to the cache, each written to a
  temporary file and renamed (builds in other processes may store the same key).

Profile-guided builds are not cached: their objects also depend on the profile's data.

Run as ``python -m flow.hw.objcache seed CACHE -- MAKE ARGS...`` and ``... store CACHE``, in the
build folder.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

#: The keys of the objects a seeded build compiles or copies, written by ``seed``.
KEYS = "hetq_objects.json"


@functools.lru_cache
def _compiler(cmd: str) -> str:
    """The compiler's ``--version`` banner and target."""
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True).stdout
    target = subprocess.run([cmd, "-dumpmachine"], capture_output=True, text=True).stdout
    return out.splitlines()[0] + " " + target.strip() if out else cmd


def runtime_objects(build: Path, make: list[str]) -> dict[str, str]:
    """The objects make would compile in ``build`` from sources outside it, each with its key
    (a hex digest), from make's dry run of the command ``make``."""
    dry = subprocess.run([*make, "-n"], cwd=build, capture_output=True, text=True, check=True)
    tools = f"verilator {version('verilator')} cocotb {version('cocotb')}"
    out = {}
    for line in dry.stdout.splitlines():
        try:
            args = shlex.split(line)
        except ValueError:
            continue
        if "-c" not in args or "-o" not in args or not args[-1].endswith((".cpp", ".c")):
            continue
        obj, src = args[args.index("-o") + 1], Path(args[-1])
        if not src.is_absolute() or build.resolve() in src.resolve().parents:
            continue                              # the model's own sources
        h = hashlib.sha256("\0".join([_compiler(args[0]), tools, line]).encode())
        h.update(src.read_bytes())
        out[obj] = h.hexdigest()
    return out


def seed(cache: Path, build: Path, make: list[str]) -> int:
    """Copy the cached runtime objects of the build in ``build`` into it; the number copied."""
    keys = runtime_objects(build, make)
    copied = 0
    for obj, key in keys.items():
        hit = cache / f"{key}.o"
        if hit.is_file() and (cache / f"{key}.d").is_file():
            for ext in (".o", ".d"):
                shutil.copyfile(cache / f"{key}{ext}", build / Path(obj).with_suffix(ext))
            copied += 1
    (build / KEYS).write_text(json.dumps(keys))
    return copied


def store(cache: Path, build: Path) -> int:
    """Copy the runtime objects that the build in ``build`` compiled (and their dependency
    files) to the cache; the number stored."""
    keys_file = build / KEYS
    if not keys_file.is_file():
        return 0
    cache.mkdir(parents=True, exist_ok=True)
    stored = 0
    for obj, key in json.loads(keys_file.read_text()).items():
        if (cache / f"{key}.o").is_file():
            continue
        for ext in (".d", ".o"):                  # the object last: it marks the entry whole
            src = build / Path(obj).with_suffix(ext)
            if not src.is_file():
                break
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=ext)
            os.close(fd)
            shutil.copyfile(src, tmp)
            os.replace(tmp, cache / f"{key}{ext}")
        else:
            stored += 1
    return stored


def main(argv: list[str], build: Path | None = None) -> int:
    """``seed CACHE -- MAKE...`` or ``store CACHE`` on the build folder ``build`` (default: the
    working folder, where make's runner starts the command). A cache never fails a
    build: an error (an unwritable folder, a dry run that fails) is reported and the build goes
    on compiling its own objects."""
    what, cache = argv[0], Path(argv[1])
    if what not in ("seed", "store"):
        raise SystemExit(f"objcache: unknown command {what!r}")
    try:
        if what == "seed":
            n = seed(cache, build or Path.cwd(), argv[argv.index("--") + 1:])
            print(f"objcache: {n} runtime objects from {cache}")
        else:
            print(f"objcache: {store(cache, build or Path.cwd())} runtime objects stored in "
                  f"{cache}")
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        print(f"objcache: {what} skipped ({e})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
