"""The YAML run config: schema, defaults, loading and one-line errors.

A config names the data, the model and its per-layer bit-widths, training, and the fault
campaign. Every key is checked: an unknown or misspelled key, a value of the wrong type or out of
range ends in a :class:`~flow.core.errors.ConfigError` that names the field and the value. The
shipped
default (``flow/configs/digits.yaml``) trains the digits CNN. ``docs/config.md`` documents every
key.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from flow.core.errors import ConfigError
from flow.core.kinds import FaultModel, MemoryKind
from flow.core.resources import DEFAULT_CONFIG


def _no_bool(what: str) -> BeforeValidator:
    """A before-validator that refuses a bool (``True`` is an int to Python, not a number to a
    user) and passes anything else on to pydantic's number parsing."""
    def check(v: object) -> object:
        if isinstance(v, bool):
            raise ValueError(f"expected {what}, not a boolean")
        return v
    return BeforeValidator(check)


Int = Annotated[int, _no_bool("an integer")]
"""An int field that refuses booleans (``epochs: true`` is not 1 epoch)."""
Float = Annotated[float, _no_bool("a number")]
"""A float field that refuses booleans; ints and YAML 1.1 strings such as ``1e-3`` still parse."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataConfig(_Strict):
    """Which data set, where it lives, and how it is split."""

    name: Literal["digits", "digits32", "mnist5k", "mnist5k32", "npz", "cifar10",
                  "mnist"] = "digits"
    root: str | None = None
    path: str | None = None
    layout: Literal["auto", "nchw", "nhwc"] = "auto"
    val_fraction: Float = 0.1
    test_fraction: Float = 0.2
    limit: Int | None = Field(default=None, ge=1)


class ModelConfig(_Strict):
    """The network (a zoo name, a factory or a QONNX file), its bit-widths and protected layers.

    ``width``, ``input_bits`` and ``act_bits`` are passed to the factory when given (the zoo's
    factories take them); ``default_weight_bits`` and ``weight_bits`` are set on the built
    network's layers (None keeps the network's own bit-widths).
    """

    arch: str = "cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    width: Float | None = Field(default=None, gt=0)
    input_bits: Int | None = Field(default=None, ge=2, le=16)
    act_bits: Int | None = Field(default=None, ge=2, le=16)
    default_weight_bits: Int | None = Field(default=None, ge=2, le=16)
    weight_bits: dict[str, Int] = Field(default_factory=dict)
    protected: list[str] = Field(default_factory=list)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        from flow.core.modelsource import parse_arch
        try:
            parse_arch(v)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("model.arch: ")) from None
        return v

    @field_validator("weight_bits")
    @classmethod
    def _bits_range(cls, v: dict[str, int]) -> dict[str, int]:
        for name, b in v.items():
            if not 2 <= b <= 16:
                raise ValueError(f"bit-width {b} of layer '{name}' is outside 2..16")
        return v


class TrainConfig(_Strict):
    """Quantization-aware training (Adam, cross-entropy)."""

    epochs: Int = Field(default=20, ge=1)
    batch_size: Int = Field(default=64, ge=1)
    lr: Float = Field(default=0.01, gt=0)
    weight_decay: Float = Field(default=0.0, ge=0)


def _check_bers(v: list[float]) -> list[float]:
    """A non-empty list of BERs in [0, 1]."""
    for b in v:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"BER {b} is outside [0, 1]")
    if not v:
        raise ValueError("needs at least one BER")
    return v


class CampaignConfig(_Strict):
    """Fault campaign: BER points, trials per point (explicit, or Leveugle from margin and
    confidence)."""

    bers: list[Float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    trials: Int | None = Field(default=None, ge=1)
    margin: Float = Field(default=0.05, gt=0, lt=1)
    confidence: Float = Field(default=0.95, gt=0, lt=1)
    fault: FaultModel = FaultModel.FLIP
    kinds: list[MemoryKind] = Field(default_factory=lambda: [MemoryKind.WEIGHT])
    layers: list[str] | None = None
    bits: list[Int] | None = None
    seed: Int | None = Field(default=None, ge=0)
    batch_maps: Int = Field(default=1, ge=1)

    @field_validator("bers")
    @classmethod
    def _ber_range(cls, v: list[float]) -> list[float]:
        return _check_bers(v)


class RankConfig(_Strict):
    """Layer-vulnerability ranking (flow.reliability.ranking: a uniform single-flip sample or
    the GA of flow.reliability.ga) and its ground truth (flow.reliability.vulnerability)."""

    method: Literal["uniform", "ga"] = "uniform"
    flips: Int = Field(default=96, ge=1)
    population: Int = Field(default=12, ge=2)
    genes: Int = Field(default=8, ge=1)
    tournament: Int = Field(default=3, ge=1)
    crossover: Float = Field(default=0.5, ge=0, le=1)
    mutation: Float = Field(default=0.25, ge=0, le=1)
    move: Float = Field(default=0.5, ge=0, le=1)
    patience: Int = Field(default=5, ge=1)
    min_tested: Int = Field(default=100, ge=1)
    max_generations: Int = Field(default=100, ge=1)
    budget: Int | None = Field(default=None, ge=1)
    images: Int | None = Field(default=None, ge=1)
    truth_margin: Float = Field(default=0.05, gt=0, lt=1)
    truth_confidence: Float = Field(default=0.95, gt=0, lt=1)
    ground_truth: bool = False
    seed: Int | None = Field(default=None, ge=0)


class ParallelConfig(_Strict):
    """Where fault-injection tasks run: this process, or Ray actors (flow.reliability.parallel)."""

    executor: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: Int | None = Field(default=None, ge=1)


class BenchSize(_Strict):
    """One network of ``hetq bench``: a zoo architecture and its width."""

    arch: Literal["mlp", "cnn"]
    width: Float = Field(gt=0)


class BenchConfig(_Strict):
    """``hetq bench fi`` and ``hetq bench clean``: the networks (about 10k, 100k and 1M weights
    by default) and their training epochs; ``fi``: BERs, test images, trials per repeat,
    repeats of the interleaved timing and maps per pass of the batched campaign trial;
    ``clean``: timed runs per network."""

    sizes: list[BenchSize] = Field(default_factory=lambda: [
        BenchSize(arch="cnn", width=1), BenchSize(arch="cnn", width=4),
        BenchSize(arch="cnn", width=14), BenchSize(arch="mlp", width=4),
        BenchSize(arch="mlp", width=16)], min_length=1)
    epochs: Int = Field(default=1, ge=1)
    bers: list[Float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2], min_length=1)
    images: Int | None = Field(default=None, ge=1)
    repeats: Int = Field(default=2, ge=1)
    trials: Int = Field(default=5, ge=1)
    batch_maps: Int = Field(default=16, ge=1)
    clean_repeats: Int = Field(default=15, ge=1)

    @field_validator("bers")
    @classmethod
    def _ber_range(cls, v: list[float]) -> list[float]:
        return _check_bers(v)


class SearchConfig(_Strict):
    """Algorithm 1: base bit-width search and protection of the most vulnerable layers."""

    accuracy_threshold: Float = Field(default=0.9, gt=0, le=1)
    drop_threshold: Float = Field(default=0.01, ge=0, lt=1)
    ber: Float = Field(default=1e-3, ge=0, le=1)
    trials: Int = Field(default=100, ge=1)
    start_bits: Int = Field(default=8, ge=2, le=16)
    finetune_epochs: Int = Field(default=3, ge=1)
    finetune_lr_scale: Float = Field(default=0.1, gt=0)
    mode: Literal["pareto", "paper"] = "pareto"
    objective: Literal["bits", "rap"] = "bits"


class TableConfig(_Strict):
    """The paper's experiment: hom(n,-), hom(-,n+2), het(n,n+2) for each n (Tables III-V)."""

    bits: list[Int] = Field(default_factory=lambda: [3, 4, 5])
    ber: Float = Field(default=1e-4, ge=0, le=1)
    bers: list[Float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    trials: Int = Field(default=200, ge=2)
    curve_trials: Int | None = Field(default=None, ge=2)
    protect_fraction: Float = Field(default=0.25, gt=0, le=1)
    lifetime: Float = Field(default=87_600.0, gt=0)
    test_interval: Float = Field(default=24.0, gt=0)
    p_single: Float = Field(default=1e-20, gt=0, le=1)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        if not v or any(not 2 <= b <= 14 for b in v):
            raise ValueError("each n must lie in 2..14 (n+2 <= 16)")
        return v


class FoldConfig(_Strict):
    """PE x SIMD folding of one layer's matrix-vector unit in the RTL accelerator."""

    pe: Int = Field(ge=1)
    simd: Int = Field(ge=1)


class RtlConfig(_Strict):
    """The RTL accelerator: folding per layer, or a cycle target the default folding meets;
    the vectors and fault maps of its standalone cocotb tests (``RUN_DIR/rtl/test_accel.py``)."""

    target_cycles: Int = Field(default=256, ge=1)
    folding: dict[str, FoldConfig] = Field(default_factory=dict)
    test_images: Int = Field(default=64, ge=1)
    test_maps: Int = Field(default=5, ge=0)
    test_ber: Float = Field(default=1e-2, ge=0, le=1)


class HlsConfig(_Strict):
    """The hls4ml project: target board, HLS backend, reuse factor."""

    board: str = "pynq-z2"
    boards_dir: str | None = None
    backend: Literal["Vitis", "Vivado"] = "Vitis"
    reuse_factor: Int = Field(default=4, ge=1)
    replay_maps: Int = Field(default=50, ge=0)
    replay_ber: Float = Field(default=1e-2, ge=0, le=1)
    replay_images: Int | None = Field(default=None, ge=1)


class SimConfig(_Strict):
    """The RTL fault campaign of ``hetq sim`` and ``hetq run`` (Verilator, cycle-accurate)."""

    bers: list[Float] | None = None
    trials: Int = Field(default=20, ge=1)
    images: Int | None = Field(default=None, ge=1)
    workers: Int | None = Field(default=None, ge=1)
    pgo: bool = True

    @field_validator("bers")
    @classmethod
    def _ber_range(cls, v: list[float] | None) -> list[float] | None:
        return v if v is None else _check_bers(v)


class ReportConfig(_Strict):
    """The designer report of ``hetq run``: boards to synthesize for, baseline design."""

    boards: list[str] = Field(default_factory=lambda: ["pynq-z2"], min_length=1)
    baseline: bool = True
    synth_workers: Int = Field(default=2, ge=1)


class ZobnnConfig(_Strict):
    """The ZOBNN study of ``hetq zobnn`` (binary networks with quantized float parameters)."""

    archs: list[Literal["breact", "bdorefa"]] = Field(
        default_factory=lambda: ["breact", "bdorefa"], min_length=1)
    width: Float = Field(default=1.0, gt=0)
    epochs: Int = Field(default=8, ge=1)
    lr: Float = Field(default=5e-3, gt=0)
    bits: list[Int] = Field(default_factory=lambda: [16, 14, 12, 10, 8], min_length=1)
    study_bits: Int = Field(default=16, ge=2, le=16)
    bers: list[Float] = Field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3])
    ber: Float = Field(default=1e-4, ge=0, le=1)
    trials: Int = Field(default=500, ge=2)
    timing_repeats: Int = Field(default=50, ge=1)
    hardware: bool = True
    rtl_target_cycles: Int = Field(default=2304, ge=1)
    rtl_images: Int = Field(default=100, ge=1, le=1024)
    rtl_bers: list[Float] = Field(default_factory=lambda: [1e-4, 1e-3])
    rtl_trials: Int = Field(default=10, ge=0)
    csim: bool = True
    synth: bool = True

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        for b in v:
            if not 2 <= b <= 16:
                raise ValueError(f"bit-width {b} is outside 2..16")
        return v

    @field_validator("bers", "rtl_bers")
    @classmethod
    def _bers(cls, v: list[float]) -> list[float]:
        return _check_bers(v)


class RunConfig(_Strict):
    """A whole run: seed, device, data, model, training, campaign, ranking, search."""

    seed: Int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    campaign: CampaignConfig = Field(default_factory=CampaignConfig)
    rank: RankConfig = Field(default_factory=RankConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    table: TableConfig = Field(default_factory=TableConfig)
    rtl: RtlConfig = Field(default_factory=RtlConfig)
    hls: HlsConfig = Field(default_factory=HlsConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    zobnn: ZobnnConfig = Field(default_factory=ZobnnConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    def to_yaml(self) -> str:
        """The resolved config as YAML (every key, defaults filled in)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def one_line(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """A pydantic error of a ``root`` document as one line: the field and the value, or for an
    unknown key the nearest known one. A misspelled key is both "unknown" and "missing": the
    unknown one is reported, with its hint."""
    errs = err.errors()
    e = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    if e["type"] == "extra_forbidden":
        model = root
        for p in e["loc"][:-1]:
            fld = model.model_fields.get(str(p))
            ann = getattr(fld, "annotation", None) if fld else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
        near = difflib.get_close_matches(str(e["loc"][-1]), list(model.model_fields), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return f"{source}: {loc}: unknown key{hint}"
    if e["type"] == "missing":
        return f"{source}: {loc}: missing required key"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{source}: {loc}: {msg} (got {e.get('input')!r})"


def resolve_paths(obj: dict, base: Path) -> dict:
    """A copy of a parsed config whose relative file paths (``model.arch`` files, ``data.path``,
    ``data.root``, ``hls.boards_dir``) are made absolute against ``base``, the config's folder."""
    from flow.core.modelsource import parse_arch
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in obj.items()}

    def fix(section: str, key: str) -> None:
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key]:
            p = Path(sec[key]).expanduser()
            sec[key] = str(p if p.is_absolute() else (base / p).resolve())

    model = out.get("model")
    if isinstance(model, dict) and isinstance(model.get("arch"), str):
        try:
            model["arch"] = parse_arch(model["arch"], base).text
        except ConfigError:
            pass                       # the schema reports it with the config's name
    fix("data", "path")
    fix("data", "root")
    fix("hls", "boards_dir")
    return out


def parse_config(obj: object, source: str = "config", base: Path | None = None) -> RunConfig:
    """Validate a parsed YAML document (a mapping) into a :class:`RunConfig`; with ``base``,
    relative paths are taken relative to that folder (:func:`resolve_paths`)."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top, got "
                          f"{type(obj).__name__}")
    if base is not None:
        obj = resolve_paths(obj, base)
    try:
        return RunConfig.model_validate(obj)
    except ValidationError as e:
        raise ConfigError(one_line(e, source, RunConfig)) from None


def override(cfg: RunConfig, values: dict[str, tuple[object, str]]) -> RunConfig:
    """``cfg`` with ``values`` set, validated by the same schema as a config file.

    ``values`` maps a dotted key (``campaign.bers``) to (value, the option that gave it, e.g.
    ``--ber``); a value of None leaves the key alone. A bad value is a one-line ConfigError that
    names the option and the value.
    """
    obj = cfg.model_dump(mode="json")
    flags: dict[tuple[str, ...], str] = {}
    for key, (value, flag) in values.items():
        if value is None:
            continue
        parts = key.split(".")
        node = obj
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"{flag}: unknown key '{key}'")
            node = node[p]
        if parts[-1] not in node and parts[-2:-1] != ["kwargs"]:
            near = difflib.get_close_matches(parts[-1], list(node), n=1)
            hint = f" (did you mean '{'.'.join([*parts[:-1], near[0]])}'?)" if near else ""
            raise ConfigError(f"{flag}: unknown key '{key}'{hint}")
        node[parts[-1]] = value
        flags[tuple(parts)] = flag
    try:
        return RunConfig.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(str(x) for x in err["loc"])
        flag = next((f for k, f in flags.items() if loc[:len(k)] == k), ".".join(loc))
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{flag}: {err.get('input')!r}: {msg}") from None


def parse_set(items: list[str] | None) -> dict[str, tuple[object, str]]:
    """``--set key=value`` options as :func:`override` values; the value is read as YAML
    (``--set train.epochs=3``, ``--set campaign.bers=[1e-3,1e-2]``)."""
    out: dict[str, tuple[object, str]] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: '{item}' is not key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: '{text}' is not a YAML value") from None
        out[key.strip()] = (value, f"--set {key.strip()}")
    return out


def read_yaml(path: Path, what: str) -> object:
    """Parse a YAML file (UTF-8); an unreadable, non-UTF-8 or malformed file is a one-line
    ConfigError that names ``what`` (e.g. ``config``), the file and, for syntax errors, the line
    and column (for bytes that are not UTF-8, the first one and its offset)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{what}: cannot read '{path}' ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what}: '{path}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} "
                          f"at offset {e.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(f"{what}: malformed YAML in '{path}'{where}: {problem}") from None


def load_config(path: str | Path | None) -> RunConfig:
    """Read and validate a YAML config file; ``None`` gives the shipped digits default."""
    p = DEFAULT_CONFIG if path is None else Path(path)
    return parse_config(read_yaml(p, "config"), str(p), base=p.resolve().parent)
