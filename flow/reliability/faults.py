"""Fault maps and fault injection into the weight-memory image.

A :class:`FaultMap` is a list of (memory, word, bit) faults, each a flip or a stuck-at-0/1,
serialized to JSON so the same map can be replayed in HLS C-sim and RTL. :func:`sample_seu` draws
single-event upsets where every stored bit flips independently with probability ``ber``: it draws
the number of flips from Binomial(bits, ber), then that many distinct positions uniformly (no
per-bit mask). :class:`Injector` applies a map to the image in place, updates only the touched
words in the executor, and undoes it afterwards: no model copy per trial.
"""
from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flow.core.arrays import unique_ints
from flow.core.errors import ConfigError, FaultMapError
from flow.core.image import WEIGHT_KINDS, MemoryImage
from flow.core.kinds import FAULT_MODELS

FAULT_KINDS = FAULT_MODELS
FAULTMAP_VERSION = 1
_INT64 = (-2 ** 63, 2 ** 63 - 1)


def _json_fault(i: int, f: object) -> tuple[str, int, int, str]:
    """Fault ``i`` of a JSON fault map as (memory, word, bit, kind), or a FaultMapError naming
    ``faultmap.faults[i]``, the field and the value (as JSON) that is wrong."""
    where = f"faultmap.faults[{i}]"
    if not isinstance(f, dict):
        raise FaultMapError(f"{where}: expected an object, got {json.dumps(f)}")
    for key in ("memory", "word", "bit"):
        if key not in f:
            raise FaultMapError(f"{where}: missing key {json.dumps(key)}")
    if not isinstance(f["memory"], str):
        raise FaultMapError(f"{where}.memory: {json.dumps(f['memory'])} is not a string")
    for key in ("word", "bit"):
        v = f[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise FaultMapError(f"{where}.{key}: {json.dumps(v)} is not an integer")
        if not _INT64[0] <= v <= _INT64[1]:
            raise FaultMapError(f"{where}.{key}: {v} is outside the 64-bit integer range")
    kind = f.get("kind", "flip")
    if not isinstance(kind, str) or kind not in FAULT_KINDS:
        raise FaultMapError(f"{where}.kind: unknown fault kind {json.dumps(kind)} "
                            f"(known: {', '.join(FAULT_KINDS)})")
    return f["memory"], f["word"], f["bit"], kind


@dataclass(frozen=True)
class FaultMap:
    """Faults as parallel arrays: ``memory[i]`` (name), ``word[i]``, ``bit[i]``, ``kind[i]``.

    Any sequences may be passed; they are stored as numpy arrays (strings for memory and kind).
    """

    memory: np.ndarray
    word: np.ndarray
    bit: np.ndarray
    kind: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", np.asarray(self.memory, dtype=str))
        object.__setattr__(self, "word", np.asarray(self.word, dtype=np.int64))
        object.__setattr__(self, "bit", np.asarray(self.bit, dtype=np.int64))
        object.__setattr__(self, "kind", np.asarray(self.kind, dtype=str))
        if not len(self.memory) == len(self.word) == len(self.bit) == len(self.kind):
            raise FaultMapError("faultmap: memory, word, bit and kind differ in length")

    def __len__(self) -> int:
        return len(self.memory)

    @classmethod
    def from_faults(cls, faults: Iterable[tuple[str, int, int] | tuple[str, int, int, str]]
                    ) -> "FaultMap":
        """Build from (memory, word, bit[, kind]) tuples."""
        rows = [tuple(f) for f in faults]
        mem = tuple(r[0] for r in rows)
        kind = tuple(r[3] if len(r) > 3 else "flip" for r in rows)
        for k in kind:
            if k not in FAULT_KINDS:
                raise FaultMapError(f"fault.kind: unknown fault kind '{k}' "
                                    f"(known: {', '.join(FAULT_KINDS)})")
        return cls(mem, np.array([r[1] for r in rows], dtype=np.int64),
                   np.array([r[2] for r in rows], dtype=np.int64), kind)

    def to_json(self) -> dict:
        """JSON-ready dict: ``{"version": 1, "faults": [{"memory", "word", "bit", "kind"}]}``."""
        return {"version": FAULTMAP_VERSION,
                "faults": [{"memory": str(m), "word": int(w), "bit": int(b), "kind": str(k)}
                           for m, w, b, k in zip(self.memory, self.word, self.bit, self.kind)]}

    @classmethod
    def from_json(cls, obj: dict) -> "FaultMap":
        """Inverse of :meth:`to_json`. Raises FaultMapError on a malformed document: a fault
        whose memory is not a string, whose word or bit is not an integer (booleans and floats
        such as 1.7 are refused, not rounded) or lies outside the 64-bit range, or whose kind is
        unknown is named by its index and field (``faultmap.faults[3].word``)."""
        if not isinstance(obj, dict) or obj.get("version") != FAULTMAP_VERSION:
            raise FaultMapError(f"faultmap.version: expected {FAULTMAP_VERSION}, "
                                f"got {obj.get('version') if isinstance(obj, dict) else obj!r}")
        faults = obj.get("faults")
        if not isinstance(faults, list):
            raise FaultMapError(f"faultmap.faults: expected a list, got {json.dumps(faults)}")
        return cls.from_faults(_json_fault(i, f) for i, f in enumerate(faults))

    def save(self, path: Path) -> None:
        """Write the map as JSON."""
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "FaultMap":
        """Read a map written by :meth:`save` (UTF-8 JSON; see :meth:`from_json`)."""
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FaultMapError(f"faultmap: cannot read '{path}' ({e})") from None

    def validate(self, image: MemoryImage) -> None:
        """Check that every fault names an existing memory, word and bit of ``image``; the first
        that does not is a FaultMapError naming its index (``faultmap.faults[i]``) and field."""
        for i, (m, w, b) in enumerate(zip(self.memory, self.word, self.bit)):
            where = f"faultmap.faults[{i}]"
            if m not in image.memories:
                raise FaultMapError(f"{where}.memory: unknown memory '{m}' "
                                    f"(memories: {', '.join(image.memories)})")
            mem = image.memories[m]
            if not 0 <= w < mem.depth:
                raise FaultMapError(f"{where}.word: word {int(w)} outside memory '{m}' "
                                    f"(depth {mem.depth})")
            if not 0 <= b < mem.width:
                raise FaultMapError(f"{where}.bit: bit {int(b)} outside memory '{m}' "
                                    f"(width {mem.width})")


class _SampledMap(FaultMap):
    """A sampler's map of flips at sorted, distinct positions: the Injector applies it by its
    per-memory runs (unchecked where it is the Injector of ``image``, the image the map was
    drawn over), and the array of memory names (a string per fault) is made only when read."""

    def __init__(self, names: np.ndarray, counts: np.ndarray, word: np.ndarray, bit: np.ndarray,
                 runs: list[tuple[str, slice]], image: MemoryImage) -> None:
        for key, value in (("word", word), ("bit", bit), ("_runs", runs),
                           ("_names", (names, counts)), ("_image", image)):
            object.__setattr__(self, key, value)

    @property
    def memory(self) -> np.ndarray:  # type: ignore[override]
        """The memory name of every fault."""
        if "_memory" not in self.__dict__:
            object.__setattr__(self, "_memory", np.repeat(*self._names))
        return self.__dict__["_memory"]

    @property
    def kind(self) -> np.ndarray:  # type: ignore[override]
        """``flip`` for every fault (a read-only broadcast view)."""
        return np.broadcast_to(np.array("flip"), (len(self.word),))

    def __len__(self) -> int:
        return len(self.word)


def ber_key(ber: float) -> int:
    """The BER's IEEE-754 bits as an integer: its part of a trial's spawn key."""
    return struct.unpack("<Q", struct.pack("<d", float(ber)))[0]


def trial_rng(seed: int, ber: float, trial: int) -> np.random.Generator:
    """The random stream of one campaign trial: a function of (seed, BER, trial index) only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ber_key(ber), trial)))


def _by_memory(names: np.ndarray) -> list[tuple[str, slice | np.ndarray]]:
    """(memory, selector) per memory a map touches, in first-seen order: slices when each
    memory's faults are contiguous (a sampler's maps), else boolean masks."""
    if names.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    firsts = names[starts].tolist()
    if len(set(firsts)) == len(firsts):
        ends = np.r_[starts[1:], names.size]
        return [(n, slice(int(a), int(e))) for n, a, e in zip(firsts, starts, ends)]
    return [(n, names == n) for n in dict.fromkeys(firsts)]


def check_ber(ber: float) -> float:
    """Return ``ber`` as float if it lies in [0, 1], else raise ConfigError naming it."""
    try:
        v = float(ber)
    except (TypeError, ValueError):
        raise ConfigError(f"ber: {ber!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"ber: {ber!r} is outside [0, 1]")
    return v


def check_targets(image: MemoryImage, *, kinds: Sequence[str] = WEIGHT_KINDS,
                  layers: Sequence[str] | None = None, bits: Sequence[int] | None = None,
                  fields: Mapping[str, str] | None = None) -> int:
    """The number of target bits of ``image`` that faults of the given ``kinds``, ``layers`` and
    bit positions ``bits`` (None: all) can hit; a target set that is empty, or a bit position
    that no targeted memory has, is refused.

    ``fields`` names the options in messages (keys ``kinds``, ``layers``, ``bits``; default
    those words), e.g. ``{"bits": "--bits"}``. Raises :class:`~flow.core.errors.ConfigError` naming
    the field and the value (for a bit position, the widths of the targeted memories), or
    :class:`~flow.core.errors.FaultMapError` for an unknown kind or layer
    (:meth:`MemoryImage.targets`).
    """
    name = {"kinds": "kinds", "layers": "layers", "bits": "bits", **(fields or {})}
    if bits is not None and len(bits) == 0:
        raise ConfigError(f"{name['bits']}: [] selects no bit (leave it out to target every bit)")
    if layers is not None and len(layers) == 0:
        raise ConfigError(f"{name['layers']}: [] selects no layer (leave it out to target every "
                          f"layer)")
    mems = image.targets(kinds, layers)
    if not mems:
        where = f" of layers {', '.join(layers)}" if layers else ""
        present = sorted({m.kind for m in image.memories.values()})
        raise ConfigError(f"{name['kinds']}: no memory{where} is of kind {', '.join(kinds)}, "
                          f"nothing to fault (kinds present: {', '.join(present)})")
    for b in bits or ():
        if not any(0 <= b < m.width for m in mems):
            widths = ", ".join(f"{m.name} {m.width}" for m in mems)
            raise ConfigError(f"{name['bits']}: bit {b} is in no targeted memory "
                              f"(widths: {widths})")
    total = sum(m.depth * (m.width if bits is None else len({b for b in bits if 0 <= b < m.width}))
                for m in mems)
    if total == 0:
        targeted = ", ".join(m.name for m in mems)
        raise ConfigError(f"{name['kinds']}: the targeted memories ({targeted}) hold no bit")
    return total


class SeuSampler:
    """Draws random fault maps over a fixed set of target bits of an image.

    The targets (memories of the given kinds and layers, bit positions of each word) are laid
    out once; each :meth:`sample` then costs a binomial draw, a draw of distinct positions and a
    few vectorized index operations. An empty target set, or a bit position no targeted memory
    has, is refused (:func:`check_targets`).
    """

    def __init__(self, image: MemoryImage, *, kinds: Sequence[str] = WEIGHT_KINDS,
                 layers: Sequence[str] | None = None, bits: Sequence[int] | None = None) -> None:
        check_targets(image, kinds=kinds, layers=layers, bits=bits)
        self._image = image                 # its maps are trusted by an Injector of it
        mems = image.targets(kinds, layers)
        allowed = [np.arange(m.width) if bits is None else np.array(
            sorted({b for b in bits if 0 <= b < m.width}), dtype=np.int64) for m in mems]
        self.names = np.array([m.name for m in mems])
        self._name_of = self.names.tolist()              # as str, for the maps' runs
        self._per_word = np.array([len(a) for a in allowed], dtype=np.int64)
        sizes = np.array([m.depth for m in mems], dtype=np.int64) * self._per_word
        self._cum = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._allowed = np.concatenate(allowed + [np.zeros(0, np.int64)]).astype(np.int64)
        self._allowed_off = np.concatenate([[0], np.cumsum(self._per_word)]).astype(np.int64)
        self.total_bits = int(self._cum[-1])
        # memories whose allowed bits are 0..k-1 (every bit): position -> bit needs no table
        self._identity = np.array([np.array_equal(a, np.arange(len(a))) for a in allowed], bool)

    def sample(self, ber: float, rng: np.random.Generator, kind: str = "flip") -> FaultMap:
        """Each target bit is hit independently with probability ``ber`` (flip or stuck-at)."""
        ber = check_ber(ber)
        if kind not in FAULT_KINDS:
            raise ConfigError(f"fault.kind: unknown fault kind '{kind}' "
                              f"(known: {', '.join(FAULT_KINDS)})")
        total = self.total_bits
        n = int(rng.binomial(total, ber)) if total else 0
        if n == 0:
            return FaultMap((), (), (), ())
        pos = (rng.choice(total, size=n, replace=False, shuffle=False) if n < total
               else np.arange(total))
        return self._faults(np.sort(pos), kind, True)   # distinct positions, in range

    def faults_at(self, pos: np.ndarray, kind: str = "flip") -> FaultMap:
        """The faults at global target-bit positions ``pos`` (0 <= pos < total_bits)."""
        pos = np.asarray(pos, dtype=np.int64)
        n = pos.size
        if n and (pos.min() < 0 or pos.max() >= self.total_bits):
            raise FaultMapError(f"fault.position: outside 0..{self.total_bits - 1}")
        return self._faults(pos, kind, n > 0 and bool((pos[1:] > pos[:-1]).all()))

    def _faults(self, pos: np.ndarray, kind: str, ordered: bool) -> FaultMap:
        """:meth:`faults_at` on checked positions; ``ordered``: increasing."""
        n = pos.size
        if ordered:         # sorted, distinct: each memory's faults are one run
            from flow.core import flips  # numba: loaded by the first sampled map
            words, bitpos = np.empty(n, np.int64), np.empty(n, np.int64)
            counts = np.zeros(len(self._name_of), np.int64)
            flips.split(pos, self._cum, self._per_word, self._allowed, self._allowed_off,
                        self._identity, words, bitpos, counts)
            if kind == "flip":
                # each memory's flips are a run of distinct (word, bit) pairs in order, as the
                # Injector's fast path needs; the names are made only if read
                runs, a = [], 0
                for name, c in zip(self._name_of, counts.tolist()):
                    if c:
                        runs.append((name, slice(a, a + c)))
                        a += c
                return _SampledMap(self.names, counts, words, bitpos, runs, self._image)
            names = np.repeat(self.names, counts)       # cheaper than names[which]
        else:
            which = np.searchsorted(self._cum, pos, side="right") - 1
            local = pos - self._cum[which]
            per = self._per_word[which]
            words = local // per
            bitpos = self._allowed[self._allowed_off[which] + local % per]
            names = self.names[which]
        # one kind for all: a read-only broadcast view, not n copies of the string
        return FaultMap(names, words, bitpos, np.broadcast_to(np.array(kind), (n,)))


def sample_seu(image: MemoryImage, ber: float, rng: np.random.Generator, *,
               kinds: Sequence[str] = WEIGHT_KINDS, layers: Sequence[str] | None = None,
               bits: Sequence[int] | None = None, kind: str = "flip") -> FaultMap:
    """Random faults: each stored bit of the target memories is hit with probability ``ber``.

    ``layers`` restricts to those layers' memories, ``bits`` to those bit positions of each word
    (0 = LSB). ``kind`` is ``flip`` (SEU) or ``stuck0``/``stuck1``. For many maps over the same
    targets, build one :class:`SeuSampler`.
    """
    return SeuSampler(image, kinds=kinds, layers=layers, bits=bits).sample(ber, rng, kind)


def total_bits(image: MemoryImage, *, kinds: Sequence[str] = WEIGHT_KINDS,
               layers: Sequence[str] | None = None, bits: Sequence[int] | None = None) -> int:
    """Number of stored bits that :func:`sample_seu` with the same options can hit."""
    return SeuSampler(image, kinds=kinds, layers=layers, bits=bits).total_bits


class Injector:
    """Applies fault maps to an image (and an executor reading it) in place, and undoes them."""

    def __init__(self, image: MemoryImage, executor=None) -> None:
        self.image, self.executor = image, executor
        self._saved: list[tuple[str, np.ndarray, np.ndarray]] = []
        self._records: list = []       # the executor's undo record of each saved change

    def apply(self, fmap: FaultMap) -> None:
        """Apply ``fmap``; faults stack until :meth:`undo`."""
        if len(fmap) == 0:
            return
        runs = getattr(fmap, "_runs", None)      # a sampler's map: sorted distinct flips
        # (drawn over this image's memories: its words and bits are in range)
        trusted = runs is not None and fmap._image is self.image
        all_flip = runs is not None or bool((fmap.kind == "flip").all())
        groups = []
        for name, sel in runs or _by_memory(fmap.memory):   # check all before changing any
            mem = self.image.memory(str(name))
            w, b = fmap.word[sel], fmap.bit[sel]
            if not trusted and (w.min() < 0 or w.max() >= mem.depth or b.min() < 0
                                or b.max() >= mem.width):
                fmap.validate(self.image)
            groups.append((name, mem, sel, w, b))
        for name, mem, sel, w, b in groups:
            if runs is not None or (all_flip and (w.size < 2 or (
                    (key := w * 64 + b)[1:] > key[:-1]).all())):
                # sorted, distinct (word, bit) pairs, as a sampler draws them: one compiled
                # pass flips them, a write per word
                from flow.core import flips  # numba: loaded by the first map applied
                uw, old = np.empty(w.size, np.int64), np.empty(w.size, mem.words.dtype)
                new = np.empty(w.size, mem.words.dtype)
                nu = flips.flip(mem.words, w, b, uw, old, new)
                uw, old, new = uw[:nu], old[:nu], new[:nu]
                self._saved.append((mem.name, uw, old))
            else:
                mask = np.left_shift(1, b)
                new = None
                uw = unique_ints(w)
                self._saved.append((mem.name, uw, mem.words[uw].copy()))
                k = fmap.kind[sel]
                for kind, ufunc, m in (("flip", np.bitwise_xor, mask),
                                       ("stuck1", np.bitwise_or, mask),
                                       ("stuck0", np.bitwise_and, ~mask)):
                    s = k == kind
                    ufunc.at(mem.words, w[s], m[s])
            if self.executor is not None:
                # an executor that can undo its own update exactly returns a record of it
                self._records.append(self.executor.update(mem.name, uw) if new is None
                                     else self.executor.update(mem.name, uw, new))

    def undo(self) -> None:
        """Restore every word touched since the last undo (in reverse order)."""
        restore = getattr(self.executor, "restore", None)
        while self._saved:
            name, uw, old = self._saved.pop()
            self.image.memories[name].words[uw] = old
            if self.executor is not None:
                record = self._records.pop()
                if restore is not None and record is not None:
                    restore(record)
                else:
                    self.executor.update(name, uw)

    def scores(self, fmap: FaultMap, codes) -> np.ndarray:
        """The executor's class-score codes (int64, numpy) for input ``codes`` with ``fmap``
        applied; the map is undone afterwards."""
        with self.injected(fmap):
            return self.executor.run(codes, quantized=True).cpu().numpy().astype(np.int64)

    @contextlib.contextmanager
    def injected(self, fmap: FaultMap) -> Iterator[None]:
        """Context manager: the map is applied inside the block and undone on exit."""
        self.apply(fmap)
        try:
            yield
        finally:
            self.undo()
