"""Binary networks of the ZOBNN study (flow.zobnn.bnn): training, determinism, stored parameters."""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from flow.core.errors import ConfigError
from flow.nn.data import Dataset, load_dataset
from flow.nn.train import accuracy
from flow.zobnn.bnn import (
    ARCHS,
    STORED_KINDS,
    BinaryConv2d,
    BinaryResNet,
    DoReFaBNN,
    FloatTwin,
    StoredParam,
    build_bnn,
    train_bnn,
)

WIDTH = 0.5          # 16 channels after the first conv: each arch trains in 1-4 s on one core
EPOCHS = 8
# measured test accuracy (seed 0, width 0.5, 8 epochs; seeds 0-4: BNNs 0.94-0.98, float 0.96-0.99)
MIN_ACC = {"breact": 0.85, "bdorefa": 0.85, "breact_float": 0.93, "bdorefa_float": 0.93}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: the machine is shared, and results do not depend on thread counts."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", None, seed=0, val_fraction=0.1, test_fraction=0.2, limit=None)


@pytest.fixture(scope="module")
def trained(digits: Dataset) -> dict[str, tuple[torch.nn.Module, list[dict]]]:
    """Every arch trained once (width 0.5, 8 epochs, seed 0). Tests must not change them."""
    out = {}
    for arch in ARCHS:
        model = build_bnn(arch, digits.input_shape, digits.num_classes, WIDTH, seed=0)
        out[arch] = model, train_bnn(model, digits, epochs=EPOCHS, lr=5e-3, batch_size=64,
                                     seed=0, progress=False)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_learns_digits(trained, digits, arch):
    model, history = trained[arch]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["loss"] < history[0]["loss"]
    assert not model.training
    assert accuracy(model, digits.test.x, digits.test.y) >= MIN_ACC[arch]


def test_same_seed_same_accuracy_and_state_dict(digits):
    runs = []
    for _ in range(2):
        m = build_bnn("breact", digits.input_shape, digits.num_classes, 0.25, seed=3)
        h = train_bnn(m, digits, epochs=2, lr=5e-3, batch_size=64, seed=3, progress=False)
        runs.append((m, h, accuracy(m, digits.test.x, digits.test.y)))
    (a, ha, acc_a), (b, hb, acc_b) = runs
    assert ha == hb and acc_a == acc_b
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = build_bnn("breact", digits.input_shape, digits.num_classes, 0.25, seed=4)
    assert not torch.equal(other.stem.conv.weight, build_bnn(
        "breact", digits.input_shape, digits.num_classes, 0.25, seed=3).stem.conv.weight)


def _expected_counts(arch: str, c: int, in_ch: int = 1, ncls: int = 10) -> dict[tuple, int]:
    """(kind, binary) -> stored numel, from the architecture description (8x8 inputs)."""
    n: dict[tuple, int] = {}

    def add(kind, binary, k):
        n[(kind, binary)] = n.get((kind, binary), 0) + k

    add("weight", False, 9 * in_ch * c)                          # float first conv, no bias
    add("bn", False, 4 * c)
    float_twin = arch.endswith("_float")
    if arch.startswith("breact"):
        convs, feat = [(c, c), (c, c), (c, 2 * c), (2 * c, 2 * c)], 2 * c   # global avg pool
    else:
        convs, feat = [(c, c), (c, 2 * c), (2 * c, 2 * c)], 2 * c * 2 * 2    # 2x2 map flattened
    for cin, cout in convs:
        add("weight", not float_twin, 9 * cin * cout)
        add("bn", False, 4 * cout)
        if arch == "breact":
            add("rsign", False, cin)
        if arch.startswith("breact"):
            add("rprelu", False, 3 * cout)
        if not float_twin:
            add("scale", False, cout if arch == "breact" else 1)
    add("weight", False, feat * ncls)
    add("bias", False, ncls)
    return n


@pytest.mark.parametrize("arch", ARCHS)
def test_stored_parameter_counts_match_the_architecture(arch):
    model = build_bnn(arch, (1, 8, 8), 10, WIDTH)
    sp = model.stored_parameters()
    assert all(isinstance(p, StoredParam) and p.kind in STORED_KINDS for p in sp)
    assert len({p.name for p in sp}) == len(sp)
    counts: dict[tuple, int] = {}
    for p in sp:
        counts[(p.kind, p.binary)] = counts.get((p.kind, p.binary), 0) + p.tensor.numel()
        assert p.name == f"{p.layer}.{p.name.rsplit('.', 1)[1]}"
        assert p.tensor is model.state_dict(keep_vars=True)[p.name]
        assert p.tensor.dtype == torch.float32 and p.tensor.is_contiguous()
    assert counts == _expected_counts(arch, 16)
    # binary = exactly the binary convs' wbin buffers
    assert {p.name for p in sp if p.binary} == {
        f"{n}.wbin" for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors in a (nested) list/tuple/dict of arguments."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _Reads(TorchFunctionMode):
    """Records every tensor passed to a torch function (ids), e.g. a weight to F.conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.seen.update(id(t) for t in _tensors((args, kwargs)))
        return func(*args, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_stored_parameters_are_exactly_what_the_eval_forward_reads(arch, shape):
    model = build_bnn(arch, shape, 10, 0.25, seed=0).eval()
    with torch.no_grad(), _Reads() as reads:
        assert model(torch.rand(2, *shape)).shape == (2, 10)
    state = model.state_dict(keep_vars=True)
    read = {k for k, v in state.items() if id(v) in reads.seen}
    stored = {p.name for p in model.stored_parameters()}
    assert read == stored
    # the latent weights of binary convs and BN's batch counters are not read in eval mode
    assert set(state) - stored == {k for k in state if k.endswith("num_batches_tracked")} | {
        f"{n}.weight" for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}


@pytest.mark.parametrize("arch", ["breact", "bdorefa"])
def test_eval_forward_reads_frozen_wbin_and_faults_reach_the_logits(trained, digits, arch):
    model, _ = trained[arch]
    x = digits.test.x[:64]
    with torch.no_grad():
        clean = model(x).clone()
        sp = {p.name: p for p in model.stored_parameters()}
        binaries = [p for p in sp.values() if p.binary]
        assert binaries and all(torch.equal(p.tensor.abs(), torch.ones_like(p.tensor))
                                for p in binaries)
        conv = model.blocks[1].conv
        assert torch.equal(conv.wbin, torch.where(conv.weight >= 0, 1.0, -1.0))
        # the latent weights are not what eval reads
        backup = conv.weight.clone()
        conv.weight.mul_(-1)
        assert torch.equal(model(x), clean)
        conv.weight.copy_(backup)

        def changes(name: str, index: int, value: float | None) -> bool:
            flat = sp[name].tensor.view(-1)
            old = flat[index].clone()
            flat[index] = -old if value is None else value
            out = model(x)
            flat[index] = old
            assert torch.equal(model(x), clean)              # restored exactly
            return not torch.equal(out, clean)

        for p in binaries:
            assert changes(p.name, 5, None), p.name              # one binary weight flipped
        assert changes("blocks.1.bn.running_var", 0, 1e30)
        assert changes("stem.bn.running_mean", 1, 1e30)
        assert changes("blocks.0.conv.alpha", 0, 1e30)
        assert changes("fc.bias", 2, 1e30)
        if arch == "breact":
            assert changes("blocks.2.rprelu.zeta", 3, 1e30)
            assert changes("blocks.2.rprelu.gamma", 3, 1e30)
            assert changes("blocks.0.rsign.beta", 0, 1e30)


def test_freeze_is_required_after_load_state_dict_and_a_training_step(trained, digits):
    model, _ = trained["breact"]
    twin = build_bnn("breact", digits.input_shape, digits.num_classes, WIDTH)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    with pytest.raises(RuntimeError, match="freeze"):
        twin(digits.test.x[:4])
    twin.freeze()
    assert torch.equal(twin(digits.test.x[:32]), model(digits.test.x[:32]))
    twin.train()
    twin(digits.test.x[:4])
    with pytest.raises(RuntimeError, match="freeze"):
        accuracy(twin, digits.test.x, digits.test.y)
    # float networks have nothing to freeze
    float_model = build_bnn("bdorefa_float", digits.input_shape, digits.num_classes, 0.25)
    float_model.train()
    float_model(digits.test.x[:4])
    float_model.freeze()
    assert 0.0 <= accuracy(float_model, digits.test.x, digits.test.y) <= 1.0


def test_builders_and_classes_agree():
    assert isinstance(build_bnn("breact", (1, 8, 8), 10), BinaryResNet)
    assert isinstance(build_bnn("bdorefa", (1, 8, 8), 10), DoReFaBNN)
    twin = build_bnn("breact_float", (1, 8, 8), 10)
    assert isinstance(twin, FloatTwin) and twin.arch == "breact_float"
    # the float twin has the binary network's layer names (no wbin/alpha, no RSign)
    binary_layers = {p.layer for p in build_bnn("breact", (1, 8, 8), 10).stored_parameters()}
    twin_layers = {p.layer for p in twin.stored_parameters()}
    assert twin_layers == {n for n in binary_layers if not n.endswith(".rsign")}
    assert not any(p.binary for p in twin.stored_parameters())


@pytest.mark.parametrize("arch, shape, width, match", [
    ("resnet18", (1, 8, 8), 1.0, "model.arch: unknown model 'resnet18'"),
    ("", (1, 8, 8), 1.0, "model.arch: unknown model ''"),
    ("breact", (1, 8, 6), 1.0, "model.arch: 'breact' needs square inputs"),
    ("bdorefa", (1, 2, 2), 1.0, "model.arch: 'bdorefa' needs inputs of at least 4x4"),
    ("breact", (1, 8, 8), 0.0, "model.width"),
])
def test_bad_models_raise_config_errors(arch, shape, width, match):
    with pytest.raises(ConfigError, match=match):
        build_bnn(arch, shape, 10, width)


def test_float_twin_of_an_unknown_kind_and_bad_training_options(digits):
    with pytest.raises(ConfigError, match="model.arch: unknown binary network 'vgg'"):
        FloatTwin("vgg")
    model = build_bnn("bdorefa", digits.input_shape, digits.num_classes, 0.25)
    with pytest.raises(ConfigError, match="train.epochs: 0"):
        train_bnn(model, digits, epochs=0, progress=False)
    with pytest.raises(ConfigError, match="train.lr"):
        train_bnn(model, digits, epochs=1, lr=-1.0, progress=False)
