"""The compiled re-evaluation of dense chains (flow.core.chain).

Every result is compared with an executor that remembers nothing (a full forward pass, float
kernels), on dense networks written here (right and left requant shifts, a requant after the last
layer, int32 accumulators at their bound, int64 ones), a CNN whose dense tail alone is
faulty, and users' Brevitas networks, under hand-written maps (single MSBs, every bit of a
layer's words, biases only, most rows of a layer, stuck-at bits, stacked maps, TMR words) and
sampled ones. The forms each map is meant to take (changes passed on through the whole chain,
or a layer's codes handed on whole) are checked to be taken.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lowered_network, same_scores

from flow.core import chain
from flow.core.executor import Executor
from flow.core.image import MemoryImage
from flow.core.intkernels import int8_matmul_exact
from flow.core.ir import IntNetwork, Node, Param
from flow.core.precision import Fixed
from flow.reliability.faults import FaultMap, SeuSampler, trial_rng

NETS = Path(__file__).with_name("user_nets.py")
KERNELS = ["float", pytest.param("int8", marks=pytest.mark.skipif(
    not int8_matmul_exact(), reason="no exact int8 matrix product on this CPU"))]


def _mlp(rng: np.random.Generator, fan_in: int = 40, widths: tuple = (29, 17, 10),
         out_requant: bool = False, wbits: int = 8, ibits: int = 8,
         weights: int | None = None) -> IntNetwork:
    """input (1 x 5 x fan_in/5, unsigned ``ibits``) -> flatten -> dense -> requant (right shift
    9, clamp 0..255) -> dense -> requant (right shift 8, clamp -128..127) -> dense [-> requant
    (left shift 2)]. ``weights``: every weight code that value (else random)."""
    w = Fixed(wbits, True, wbits - 1)
    i_mag = (1 << ibits) - 1
    params, nodes = {}, [Node("input", "input", [], ibits, 0, i_mag,
                              {"bits": ibits, "signed": False}),
                         Node("f", "flatten", ["input"], ibits, 0, i_mag)]
    src, frac, mag = "f", ibits, i_mag
    for li, out in enumerate(widths):
        name, fin = f"d{li + 1}", (fan_in if li == 0 else widths[li - 1])
        lo = -(1 << (wbits - 1))
        codes = (np.full((out, fin), weights) if weights is not None
                 else rng.integers(lo, -lo, (out, fin)))
        params[f"{name}.weight"] = Param(f"{name}.weight", name, "weight", w, codes)
        params[f"{name}.bias"] = Param(f"{name}.bias", name, "bias", Fixed(16, True, 15),
                                       rng.integers(-3000, 3000, out))
        bound = fin * mag * (1 << (wbits - 1)) + (1 << 15)
        acc = frac + wbits - 1
        nodes.append(Node(name, "dense", [src], acc, -bound, bound,
                          {"weight": f"{name}.weight", "bias": f"{name}.bias"}))
        last = li == len(widths) - 1
        if last and not out_requant:
            break
        rq, lo_hi = f"r{li + 1}", [(acc - 9, 0, 255), (acc - 8, -128, 127)][li % 2]
        if last:
            lo_hi = (acc + 2, -(1 << 20), 1 << 20)
        nodes.append(Node(rq, "requant", [name], *lo_hi))
        src, frac, mag = rq, lo_hi[0], max(abs(lo_hi[1]), abs(lo_hi[2]))
    return IntNetwork("chain", nodes, params, (1, 5, fan_in // 5), widths[-1])


class _Spy:
    """Records each compiled layer's result (its number of changed codes, -1: its codes whole,
    -2: its changed columns), the forms of the changes handed on before a layer that costs
    more compiled than whole ("columns" or "whole"), the last layer's runs whole compiled
    (``tails``) and the results of the layers fed by a GEMM of changed columns (``fed``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[int] = []
        self.handed: list[str] = []
        self.tails = 0
        self.fed: list[int] = []
        layer, handed, fed = chain._layer, chain.Chain._handed, chain._fed

        def spy_tail(kernel):
            def run(*a):
                self.tails += 1
                return kernel(*a)
            return run

        def spy_fed(*a):
            m = fed(*a)
            self.fed.append(int(m))
            return m
        monkeypatch.setattr(chain, "_requant_t", spy_tail(chain._requant_t))
        monkeypatch.setattr(chain, "_fed", spy_fed)

        def spy(*a):
            m = layer(*a)
            self.results.append(int(m))
            return m

        def spy_handed(*a):
            cols, vals = handed(*a)
            self.handed.append("whole" if cols is None else "columns")
            return cols, vals
        monkeypatch.setattr(chain, "_layer", spy)
        monkeypatch.setattr(chain.Chain, "_handed", spy_handed)


def _pair(net: IntNetwork, protected: list[str], kernels: str, x: torch.Tensor):
    """An image, a remembering executor on ``kernels`` and a fresh float one over it."""
    image = MemoryImage.build(net, protected)
    ex = Executor(net, image, "cpu", kernels=kernels)
    ex.remember(x, quantized=True)
    return image, ex, Executor(net, image, "cpu", kernels="float")


def test_links_are_dense_chains_to_the_output():
    """A chain starts at a dense layer and runs dense, requant, ..., dense[, requant] to the
    output, each node reading the one before; anything else is not one."""
    rng = np.random.default_rng(0)
    net = _mlp(rng)
    assert chain.links(net, 2) == [(2, 3), (4, 5), (6, None)]
    assert chain.links(net, 4) == [(4, 5), (6, None)]
    assert chain.links(net, 3) is None                   # a requant
    assert chain.links(_mlp(rng, out_requant=True), 2) == [(2, 3), (4, 5), (6, 7)]
    net.nodes[4].inputs = ["f"]                          # d2 reads the flatten: no chain
    assert chain.links(net, 2) is None


@pytest.mark.parametrize("k", [-2, 0, 1, 3, 9])
def test_requant_rounds_as_the_executor(k):
    """The compiled requant equals the executor's ``round(v * 2**-k)`` (half to even), clamped,
    on every accumulator of a range (every tie of a right shift included)."""
    v = np.arange(-5000, 5000)
    want = torch.round(torch.as_tensor(v, dtype=torch.float64) * 2.0 ** -k).clamp(-900, 1000)
    got = [chain._requant(int(a), k, -900, 1000) for a in v]
    assert got == want.long().tolist()


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("protected", [False, True], ids=["plain", "tmr"])
@pytest.mark.parametrize("out_requant", [False, True], ids=["scores", "requant"])
def test_hand_written_maps_equal_a_full_forward(monkeypatch, kernels, protected, out_requant):
    """Maps written for each form equal a full forward pass, one after another on the same
    executor (a layer handed on whole is clean again for the next map); every form is taken."""
    rng = np.random.default_rng(4)
    net = _mlp(rng, out_requant=out_requant)
    x = torch.as_tensor(rng.integers(0, 256, (37, 1, 5, 8)), dtype=torch.float32)
    image = MemoryImage.build(net, ["d2"] if protected else [])
    spy = _Spy(monkeypatch)
    mem = {n: image.memory(f"{n}.weight") for n in ("d1", "d2", "d3")}
    top = {n: m.width - 1 for n, m in mem.items()}
    clean = Executor(net, image, "cpu", kernels="float").run(x, quantized=True)
    maps = {
        # the two top bits of one word per layer (both MSB copies of a TMR word)
        **{f"msb {n}": [FaultMap.from_faults([(f"{n}.weight", 5, top[n]),
                                              (f"{n}.weight", 5, top[n] - 1)])] for n in mem},
        # every bit of a few words of d1, and of d2 on its changed input
        "words": [FaultMap.from_faults(
            [("d1.weight", w, b) for w in (0, 1, 39) for b in range(mem["d1"].width)]
            + [("d2.weight", 3, 0), ("d2.weight", 30, top["d2"])])],
        "biases": [FaultMap.from_faults([("d1.bias", 2, 15), ("d2.bias", 7, 14),
                                         ("d3.bias", 0, 15)])],
        # most rows of each layer: the codes handed on whole
        **{f"most rows {n}": [FaultMap.from_faults(
            [(f"{n}.weight", mem[n].depth // 29 * r + r % 7, top[n]) for r in range(0, 29)])]
           for n in mem},
        # a few rows of d1, changed much: their columns passed on whole
        "five rows d1": [FaultMap.from_faults(
            [("d1.weight", 40 * r + w, top["d1"]) for r in (2, 9, 15, 20, 27)
             for w in (0, 13, 26)])],
        # the later rows' weights and the first rows' biases (columns out of order)
        "rows and biases d1": [FaultMap.from_faults(
            [("d1.weight", 40 * r + 3, top["d1"]) for r in range(10, 29)]
            + [("d1.bias", r, 14) for r in range(6)])],
        "stuck and flips": [FaultMap.from_faults(
            [("d1.weight", 17, top["d1"], "stuck1"), ("d1.weight", 17, 0),
             ("d3.weight", 40, top["d3"], "stuck0"), ("d3.weight", 41, 1, "stuck1")])],
        # two maps stacked: the second touches words of the first again
        "stacked": [FaultMap.from_faults([("d2.weight", 99, top["d2"]), ("d1.weight", 8, 3)]),
                    FaultMap.from_faults([("d2.weight", 99, top["d2"]),
                                          ("d2.weight", 100, 2), ("d3.weight", 1, 0)])],
    }
    changed = 0
    # small layers: a cheaper compiled form takes every form a map allows (1: changes passed
    # on; 8 and 32: fewer, the codes handed on whole or by columns sooner)
    for cost in (1, 8, 32):
        monkeypatch.setattr(chain, "COMPILED_COST", cost)
        image, ex, fresh = _pair(net, ["d2"] if protected else [], kernels, x)
        for _ in range(2):                               # twice: nothing left over
            for fmaps in maps.values():
                changed += not torch.equal(same_scores(image, ex, fresh, x, fmaps).double(),
                                           clean.double())
        assert torch.equal(ex.run(x, quantized=True).double(), clean.double())
    assert changed >= 3 * len(maps)                      # the maps do change scores
    # changes passed on, a layer's codes handed on whole, and the changed columns of a first
    # layer on its clean input
    assert {-1, -2} <= set(spy.results) and any(m > 0 for m in spy.results)
    # (int8 layers' products cost less: there the changes are handed on by columns only)
    assert "columns" in spy.handed and ("whole" in spy.handed or kernels == "int8")
    # the last layer run whole compiled after the one before it was handed on whole (float32
    # kernels: an int8 last layer goes to its own kernel)
    assert spy.tails or kernels == "int8"
    # a first layer's changed columns fed to the next layer's GEMM
    assert -1 in spy.fed


@pytest.mark.parametrize("cost", [8, 12])
def test_changed_columns_feed_the_next_layers_gemm(monkeypatch, cost):
    """A first layer's bias bits flipped in five of its eight outputs: every image's code
    moves in those columns (more changes than the next layer's compiled form takes), so they
    feed the next layer's GEMM. Weights of 1: a move of one code moves the next layer's
    accumulator by one (few of its codes change: passed on as changes), of sixteen codes by
    sixteen (many change: its codes whole). Stacked with weight flips of the fed layer (on
    its clean input) and of the fed columns' weights (in the GEMM). At the higher cost, the
    fed layer's changes are handed on to a last layer that costs more compiled than whole.
    Equal to a full forward."""
    rng = np.random.default_rng(6)
    net = _mlp(rng, widths=(8, 6, 4), weights=1)
    x = torch.as_tensor(rng.integers(0, 256, (37, 1, 5, 8)), dtype=torch.float32)
    monkeypatch.setattr(chain, "COMPILED_COST", cost)
    image, ex, fresh = _pair(net, [], "float", x)
    # the first layer's codes sit inside 1..238: a bias bit moves every image's code
    codes = Executor(net, image, "cpu").run(x, quantized=True, trace=True)["r1"]
    assert 0 < codes.min() and codes.max() < 239
    spy = _Spy(monkeypatch)
    for bit in (9, 12, 13):
        for extra in ([], [("d2.weight", 3, 2), ("d2.weight", 9, 7), ("d2.bias", 1, 12)]):
            fmap = FaultMap.from_faults([("d1.bias", o, bit) for o in (0, 2, 3, 5, 7)] + extra)
            same_scores(image, ex, fresh, x, [fmap])
    assert spy.results.count(-2) == 6 and len(spy.fed) == 6
    assert any(m >= 0 for m in spy.fed) and -1 in spy.fed
    assert bool(spy.handed) == (cost == 12)


@pytest.mark.parametrize("cost, fed", [(40, True), (20, False)])
def test_columns_feed_the_gemm_where_it_costs_less(monkeypatch, cost, fed):
    """One bias bit of the first layer moves every image's code in its column: fewer changes
    than the next layer's list takes (64 inputs: 1.6 per image at cost 40), so before they
    were passed on as changes. At the default cost the next layer's compiled form on them
    (40 x 2 per image and output) costs more than a GEMM of the one column (1 + FED_ELEMENT):
    the column feeds the GEMM; at half that cost the changes are passed on. Equal to a full
    forward either way."""
    rng = np.random.default_rng(11)
    net = _mlp(rng, widths=(64, 32, 10), weights=1)
    x = torch.as_tensor(rng.integers(0, 256, (41, 1, 5, 8)), dtype=torch.float32)
    monkeypatch.setattr(chain, "COMPILED_COST", cost)
    image, ex, fresh = _pair(net, [], "float", x)
    o = int(np.flatnonzero(net.params["d1.bias"].codes >= 0)[0])   # bit 12 clear: +4096
    spy = _Spy(monkeypatch)
    same_scores(image, ex, fresh, x, [FaultMap.from_faults([("d1.bias", o, 12)])])
    assert (spy.results[0] == -2) == fed and bool(spy.fed) == fed
    assert fed or spy.results[0] == len(x)              # every image's code moved


def test_gemm_takes_only_the_columns_that_moved():
    """The GEMM's operands keep the changed columns where some code moved (in order), each
    with the layer's current weights from it (a changed weight on a kept column added, one on
    a dropped column not), and leave their scratch clear."""
    RT = np.array([[3, 4, 5], [7, 7, 7], [0, 1, 2], [9, 9, 9]], np.uint8)     # (inputs, images)
    dCT = np.array([[3, 4, 6], [7, 7, 7], [0, 0, 2]], np.int32)   # new codes of cols 0, 1, 2
    cols = np.array([0, 1, 2], np.int64)
    WTf = np.arange(8, dtype=np.float32).reshape(4, 2)            # (inputs, outputs)
    inq = np.full(4, -1, np.int64)
    DT, Wc = np.full((4, 5), 99, np.float32), np.zeros((4, 2), np.float32)
    wrow, wcol, dw = (np.array([1, 0, 0]), np.array([2, 1, 3]),
                      np.array([5, -3, 8], np.float32))
    kept = chain._gemm_operands(dCT, RT, cols, 3, WTf, inq, wrow, wcol, dw, DT, Wc)
    assert kept == 2                                     # column 1 moved no code
    assert DT[:2, :3].tolist() == [[0, 0, 1], [0, -1, 0]]
    assert Wc[:2].tolist() == [[0, 1], [4, 5 + 5]]       # column 2's output 1 weight: +5
    assert (inq == -1).all() and (DT[:, 3:] == 99).all()  # padding left as it was


def test_columns_feed_a_gemm_only_below_2_24(monkeypatch):
    """16-bit weights: a first layer's weight MSBs flipped in two or in twenty outputs move
    those codes between 0 and 255; the next layer's GEMM of |change| 255 times weights up to
    32,767 stays below 2**24 for two columns (fed) and not for twenty (run another way, at a
    cost where twenty columns would be passed on). Equal to a full forward. (Which form runs
    is asserted: these sums saturate the requant, so a rounded GEMM would not show in the
    scores.)"""
    rng = np.random.default_rng(8)
    net = _mlp(rng, wbits=16)
    x = torch.as_tensor(rng.integers(0, 256, (37, 1, 5, 8)), dtype=torch.float32)
    spy = _Spy(monkeypatch)
    for outputs, every, cost, fed in ((2, 3, 32, True), (20, 40, 12, False)):
        monkeypatch.setattr(chain, "COMPILED_COST", cost)
        image, ex, fresh = _pair(net, [], "float", x)
        top = image.memory("d1.weight").width - 1
        before, runs = len(spy.fed), len(spy.results)
        fmap = FaultMap.from_faults([("d1.weight", 40 * o + w, top) for o in range(outputs)
                                     for w in range(0, 40, every)])
        same_scores(image, ex, fresh, x, [fmap])
        assert len(spy.results) > runs                   # the chain ran
        assert (len(spy.fed) > before) == fed


@pytest.mark.parametrize("every_bit", [False, True], ids=["msbs", "every-bit"])
def test_int32_accumulators_at_their_bound(monkeypatch, every_bit):
    """A layer whose worst case sits just below INT32_SAFE runs on int32 accumulators: every
    weight code -128 on inputs of 255, then every MSB flipped (codes 0) or every bit (codes
    127, each weight's change 255: the changes' sums reach twice the bound)."""
    rng = np.random.default_rng(5)
    fan_in = 8190
    net = _mlp(rng, fan_in=fan_in, widths=(4, 3), weights=-128)
    assert net.nodes[2].hi < chain.INT32_SAFE <= 2 * net.nodes[2].hi
    x = torch.as_tensor(rng.integers(0, 256, (6, 1, 5, fan_in // 5)), dtype=torch.float32)
    x[:3] = 255
    image, ex, fresh = _pair(net, [], "float", x)
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(chain, "COMPILED_COST", 1e-3)    # compiled, however many changes
    bits = range(8) if every_bit else [7]
    fmap = FaultMap.from_faults([("d1.weight", w, b) for w in range(4 * fan_in) for b in bits])
    same_scores(image, ex, fresh, x, [fmap])
    layers = ex._memo[ex._key(x, True)][2]["chain"].layers
    assert [ly.A.dtype for ly in layers] == [np.int32, np.int32] and spy.results


def test_int64_accumulators(monkeypatch):
    """16-bit weights on 16-bit inputs: accumulators past INT32_SAFE run on int64."""
    rng = np.random.default_rng(6)
    net = _mlp(rng, fan_in=60, widths=(21, 10), wbits=16, ibits=16)
    x = torch.as_tensor(rng.integers(0, 1 << 16, (19, 1, 5, 12)), dtype=torch.float32)
    image, ex, fresh = _pair(net, [], "float", x)
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(chain, "COMPILED_COST", 1e-3)
    for fmap in (FaultMap.from_faults([("d1.weight", 7, 15), ("d1.weight", 300, 14)]),
                 FaultMap.from_faults([("d1.weight", w, 15) for w in range(0, 1260, 7)]),
                 FaultMap.from_faults([("d2.weight", 3, 15), ("d2.bias", 1, 15)])):
        same_scores(image, ex, fresh, x, [fmap])
    layers = ex._memo[ex._key(x, True)][2]["chain"].layers
    assert layers[0].A.dtype == np.int64 and len(spy.results) >= 4


def test_a_cnns_dense_tail(monkeypatch):
    """A CNN (a user's odd CNN) whose faults sit in its dense layers runs its tail compiled;
    a fault in a conv runs the PyTorch forms from there (no chain from a conv)."""
    net, image, data = lowered_network(f"{NETS}:odd_cnn", "chain")
    ex = Executor(net, image, "cpu")
    fresh = Executor(net, image, "cpu", kernels="float")
    x = ex.quantize_input(data.test.x[:80])
    ex.remember(x, quantized=True)
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(chain, "COMPILED_COST", 1)       # compiled, however small the layer
    dense = [n.attrs["weight"] for n in net.nodes if n.op == "dense"]
    conv = next(n.attrs["weight"] for n in net.nodes if n.op == "conv")
    for m in dense:
        same_scores(image, ex, fresh, x, [FaultMap.from_faults(
            [(m, w, image.memory(m).width - 1) for w in range(0, image.memory(m).depth, 97)])])
    used = len(spy.results)
    assert used >= len(dense)
    same_scores(image, ex, fresh, x, [FaultMap.from_faults([(conv, 3, image.memory(conv).width - 1),
                                                      (dense[0], 1, 0)])])
    assert len(spy.results) == used


@pytest.mark.parametrize("arch", ["dense_64_37_23_10", "odd_cnn", "residual_gap"])
def test_sampled_maps_on_users_networks(monkeypatch, arch):
    """Users' Brevitas networks, sampled maps at 1e-5 to 1e-2 over weights and biases (on the
    dense layers alone too), 8 trials each; the MLP's changes pass through compiled layers."""
    net, image, data = lowered_network(f"{NETS}:{arch}", "chain")
    fresh = Executor(net, image, "cpu", kernels="float")
    ex = Executor(net, image, "cpu")
    x = ex.quantize_input(data.test.x[:150])
    ex.remember(x, quantized=True)
    spy = _Spy(monkeypatch)
    dense = tuple(n.name for n in net.nodes if n.op == "dense")
    flips = 0
    for layers in (None, dense):
        sampler = SeuSampler(image, kinds=("weight", "bias"), layers=layers)
        for ber in (1e-5, 1e-4, 1e-3, 1e-2):
            for t in range(8):
                fmap = sampler.sample(ber, trial_rng(3, ber, t))
                flips += len(fmap)
                same_scores(image, ex, fresh, x, [fmap])
    assert flips > 0
    if arch.startswith("dense"):
        assert any(m > 0 for m in spy.results)


def test_kernels_read_no_tunable_constants():
    """The compiled kernels take their tunables (costs, caps, bounds) as arguments: numba freezes
    a global's value into its on-disk cache, so a kernel that read one would keep, in every
    later process, whatever value it had when compiled (a test that patched the constant would
    leave its value behind). Only fixed names (the decode modes) may be read."""
    from numba.core.registry import CPUDispatcher

    from flow.core import flips
    fixed = {"SIGNED", "BIPOLAR", "PROTECTED_SIGNED", "UNSIGNED", "PROTECTED_UNSIGNED",
             "PROTECTED_BIPOLAR"}
    kernels = [(mod.__name__, name, obj) for mod in (chain, flips)
               for name, obj in vars(mod).items()
               if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__]
    assert len(kernels) >= 10
    read = {f"{mod}.{name}": sorted(n for n in k.py_func.__code__.co_names
                                    if n.lstrip("_").isupper() and n not in fixed)
            for mod, name, k in kernels}
    assert {k: v for k, v in read.items() if v} == {}


@pytest.mark.parametrize("lo, hi, want", [(0, 127, np.int8), (-128, 127, np.int8),
                                          (0, 255, np.uint8), (-1, 255, np.int16),
                                          (-32768, 300, np.int16), (0, 40000, np.int32),
                                          (-5, 1 << 40, np.int64)])
def test_clean_codes_in_their_narrowest_type(lo, hi, want):
    """Codes a layer only reads are kept in the narrowest of int8, uint8, int16 and the
    accumulator type that holds them all, unchanged."""
    dt = np.int64 if hi >= 1 << 31 else np.int32
    a = np.array([[lo, hi], [hi, lo]], dt).T                  # transposed: made contiguous
    got = chain._narrowest(a, dt)
    assert got.dtype == want and got.flags.c_contiguous and (got == a).all()
