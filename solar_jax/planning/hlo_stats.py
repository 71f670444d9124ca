"""What a compiled step does, read from its optimized HLO text (compiled.as_text()).

XLA's cost_analysis() counts a while loop's body once, so for a step whose layers run in
lax.scan (and microbatches in another) it reports a fraction of the work. Here every
computation gets a multiplicity, how often it runs per step: the entry 1; a while body and
condition the trip count of their loop times the while's own multiplicity; fusions, calls,
reductions and async wrappers their caller's. Collectives and matmul FLOPs are summed with
those multiplicities.

Trip counts come from a while's known_trip_count when XLA records it, else from its
condition `i < constant(N)` (how lax.scan and fori_loop lower, counting from 0).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import numpy as np

# bytes per element of HLO primitive types
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
                "s64": 8, "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3b11fnuz": 1, "f8e5m2fnuz": 1,
                "f8e4m3fnuz": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \((.*)\) -> (.*) \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([^\s=]+) = (.*)$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|async_execution_thread_computation)="
                     r"(\{[^}]*\}|%?[^,\s}]+)")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str  # e.g. bf16[2,128]{1,0} or a tuple (...)
    opcode: str
    operand_text: str  # between the opcode's parentheses
    attributes: str  # after them

    @property
    def operands(self) -> list[str]:
        return re.findall(r"%([^\s,)]+)", self.operand_text)


@dataclasses.dataclass
class Computation:
    name: str
    shapes: dict[str, str]  # parameter or instruction name -> its shape text
    instructions: list[Instruction]
    entry: bool


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced brackets in HLO: {text[start:start + 80]}")


def _parse_instruction(line: str) -> Instruction | None:
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    name, rest = m.group(1), m.group(2)
    end = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")
    if end < 0:
        return None
    shape, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([a-z][\w-]*)\(", rest)
    if not op:
        return None
    close = _balanced(rest, op.end() - 1)
    return Instruction(name, shape, op.group(1), rest[op.end():close - 1], rest[close:])


def parse(text: str) -> dict[str, Computation]:
    """HLO module text -> computations by name."""
    comps: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        if current is None:
            h = _HEADER.match(line)
            if h:
                params = {p.group(1): p.group(2)
                          for p in re.finditer(r"([\w.\-]+): (\([^)]*\)|[^\s,()]+)", h.group(3))}
                current = Computation(h.group(2), params, [], bool(h.group(1)))
            continue
        if line.rstrip() == "}":  # a custom call's backend config may span lines starting with }
            comps[current.name] = current
            current = None
            continue
        inst = _parse_instruction(line)
        if inst is not None:
            current.instructions.append(inst)
            current.shapes[inst.name] = inst.shape
    return comps


def array_bytes(shape: str) -> int:
    """Bytes of an array or tuple shape text (layouts ignored)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        total += _DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def dims(shape: str) -> list[int]:
    """The dimensions of the first array in a shape text."""
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _trip_count(inst: Instruction, comps: dict[str, Computation]) -> int:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attributes)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=%?([^,\s}]+)", inst.attributes)
    comp = comps.get(cond.group(1)) if cond else None
    if comp is None:
        return 1
    constants = {i.name: int(i.operand_text) for i in comp.instructions
                 if i.opcode == "constant" and re.fullmatch(r"-?\d+", i.operand_text.strip())}
    for i in comp.instructions:
        if i.opcode == "compare" and "direction=LT" in i.attributes:
            values = [constants[o] for o in i.operands if o in constants]
            if values:
                return max(values[0], 0)
    return 1


def _callees(inst: Instruction) -> list[str]:
    """Names of the computations an instruction calls (fusions, bodies, branches, reducers)."""
    return [c for _, group in _CALLED.findall(inst.attributes) for c in re.findall(r"%?([^,\s{}%]+)", group)]


def multiplicities(comps: dict[str, Computation]) -> dict[str, int]:
    """Computation name -> how many times it runs per execution of the entry."""
    entry = next(c for c in comps.values() if c.entry)
    counts: dict[str, int] = collections.defaultdict(int)

    def visit(name: str, times: int) -> None:
        if name not in comps or times == 0:
            return
        counts[name] += times
        for inst in comps[name].instructions:
            factor = _trip_count(inst, comps) if inst.opcode == "while" else 1
            for callee in _callees(inst):
                visit(callee, times * factor)

    visit(entry.name, 1)
    return dict(counts)


def _iota(text: str) -> np.ndarray:
    """'[2,8]T(1,0)' -> arange(16).reshape(2, 8).transpose(1, 0), flattened."""
    m = re.fullmatch(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", text)
    shape = [int(d) for d in m.group(1).split(",")]
    ids = np.arange(math.prod(shape)).reshape(shape)
    if m.group(2):
        ids = ids.transpose([int(p) for p in m.group(2).split(",")])
    return ids.reshape(-1)


def replica_groups(attributes: str, num_devices: int) -> list[list[int]]:
    """The device groups of a collective (ids in the executable's device order), from any of
    the forms XLA prints: {{0,1},{2,3}}; iota [G,S]<=[dims]T(perm); mesh['a'=2,'b'=4] {'b'};
    source_target_pairs={{0,1},...} (pairs); none (all devices, one group)."""
    explicit = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", attributes)
    if explicit:
        return [[int(d) for d in g.split(",") if d] for g in re.findall(r"\{([\d,]*)\}", explicit.group(1))]
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=(\[[\d,]+\](?:T\([\d,]+\))?)", attributes)
    if iota:
        return _iota(iota.group(2)).reshape(-1, int(iota.group(1).split(",")[-1])).tolist()
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\((\[[\d,]+\](?:T\([\d,]+\))?|[\d,]+)\))? "
                     r"\{([^}]*)\}", attributes)
    if mesh:
        sizes = [(a, int(n)) for a, n in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))]
        grouped = re.findall(r"'([^']+)'", mesh.group(3))
        names = [a for a, _ in sizes]
        count = math.prod(n for _, n in sizes)
        # The mesh's devices in order: an iota [dims]T(perm) flattened, a list, or 0..n-1.
        ids = _iota(mesh.group(2)) if mesh.group(2) and mesh.group(2).startswith("[") else \
            np.array([int(d) for d in mesh.group(2).split(",")]) if mesh.group(2) else np.arange(count)
        ids = ids.reshape([n for _, n in sizes])
        order = [names.index(a) for a in names if a not in grouped] + [names.index(a) for a in grouped]
        return ids.transpose(order).reshape(-1, math.prod(n for a, n in sizes if a in grouped)).tolist()
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
    if pairs:
        return [[int(d) for d in p.split(",")] for p in re.findall(r"\{?(\d+,\d+)", pairs.group(1))]
    return [list(range(num_devices))]


@dataclasses.dataclass
class Collective:
    kind: str  # all-gather | reduce-scatter | all-reduce | all-to-all | collective-permute
    ops: int = 0  # in the HLO text (one per channel)
    count: int = 0  # executions per step
    bytes: int = 0  # per device per step: the full (unsharded) array each execution moves
    wire_bytes: float = 0.0  # what one device sends per step with ring algorithms
    cross_host_wire_bytes: float = 0.0  # the part of wire_bytes whose groups span hosts


def collectives(comps: dict[str, Computation], num_devices: int,
                times: dict[str, int] | None = None, hosts: list[int] | None = None) -> dict[str, Collective]:
    """Per kind: executions, bytes (all-gather: its output, reduce-scatter: its input,
    others: their operand) and wire bytes per device ((g - 1) / g of that, twice for
    all-reduce, g the group size) per step. XLA on TPU writes a reduce-scatter as an
    all-reduce inside a computation named all-reduce-scatter*: counted as reduce-scatter.
    Its async collective fusions clone a collective into several computations (start,
    continuation, done) that share a channel_id and a chain_id: each chain is counted once.
    A channel_id alone does not tell collectives apart: when XLA unrolls a loop, the copies of
    a collective keep its channel_id. times: multiplicities(comps), when the caller has it.
    hosts: the host of each device id (GPU hosts): a collective whose groups hold devices of
    two hosts counts its wire bytes in cross_host_wire_bytes too."""
    times = times if times is not None else multiplicities(comps)
    # channel (or instruction) -> kind, times, bytes, wire, whether its groups span hosts
    seen: dict[str, tuple[str, int, int, float, bool]] = {}
    for comp in comps.values():
        n = times.get(comp.name, 0)
        if not n:
            continue
        for inst in comp.instructions:
            op = inst.opcode.removesuffix("-start")
            if op not in COLLECTIVES or inst.opcode.endswith("-done"):
                continue
            if op == "all-reduce" and comp.name.startswith("all-reduce-scatter"):
                op = "reduce-scatter"
            operand_bytes = sum(array_bytes(comp.shapes.get(o, "")) for o in inst.operands)
            size = array_bytes(_result_shape(inst)) if op == "all-gather" else operand_bytes or array_bytes(inst.shape)
            groups = replica_groups(inst.attributes, num_devices)
            g = len(groups[0])  # devices in one group
            wire = size * (g - 1) / g * (2 if op == "all-reduce" else 1) if g > 1 else 0.0
            if op == "collective-permute":
                wire = size
            chain = re.search(r'chain_id="(\d+)"', inst.attributes)
            channel = re.search(r"channel_id=(\d+)", inst.attributes)
            key = (f"channel {channel.group(1) if channel else '-'} chain {chain.group(1)}" if chain
                   else f"{comp.name}/{inst.name}")
            across = hosts is not None and any(len({hosts[d] for d in group if d < len(hosts)}) > 1
                                               for group in groups)
            if key not in seen or seen[key][1] < n:
                seen[key] = (op, n, size, wire, across)
    out: dict[str, Collective] = {}
    for op, n, size, wire, across in seen.values():
        entry = out.setdefault(op, Collective(op))
        entry.ops += 1
        entry.count += n
        entry.bytes += n * size
        entry.wire_bytes += n * wire
        entry.cross_host_wire_bytes += n * wire if across else 0.0
    return out


def _result_shape(inst: Instruction) -> str:
    """An async collective's start returns (operands, results, ...): its results part. With n
    operands XLA writes ((operand 1..n), (result 1..n)) (GPU, combined collectives) or
    (operand, result, u32[], u32[]) (TPU): the arrays n to 2n."""
    if inst.shape.startswith("(") and inst.opcode.endswith("-start"):
        arrays = _ARRAY.findall(inst.shape)
        n = max(len(inst.operands), 1)
        if len(arrays) >= 2 * n:
            return " ".join(f"{dtype}[{d}]" for dtype, d in arrays[n:2 * n])
    return inst.shape


def _real_taps(size: int, window: int, lo: int, hi: int, stride: int = 1, lhs_dilation: int = 1,
               rhs_dilation: int = 1) -> int:
    """(output position, window tap) pairs of one spatial dim that read real input, not
    padding or the holes of a dilated input. XLA on TPU writes some dots as convolutions
    whose padded or dilated window lands on one real element per output (a head or batch
    axis as a spatial dim): only those taps are work."""
    dilated = (size - 1) * lhs_dilation + 1
    out = (dilated + lo + hi - (window - 1) * rhs_dilation - 1) // stride + 1
    if out <= 0:
        return 0
    positions = np.arange(out)[:, None] * stride + np.arange(window)[None, :] * rhs_dilation - lo
    real = (positions >= 0) & (positions < dilated) & (positions % lhs_dilation == 0)
    return int(real.sum())


def _conv_flops(inst: Instruction, comp: Computation) -> float:
    """2 x multiply-adds of a dot or convolution (the form dots take on TPU)."""
    ops = inst.operands
    if len(ops) < 2:
        return 0.0
    out = dims(inst.shape)
    lhs, rhs = dims(comp.shapes.get(ops[0], "")), dims(comp.shapes.get(ops[1], ""))
    if inst.opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.attributes)
        k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i) if contracting else 1
        return 2.0 * math.prod(out) * k
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attributes)
    if not labels or len(labels.group(1)) != len(lhs) or len(labels.group(2)) != len(rhs):
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    window = re.search(r"window=\{([^}]*)\}", inst.attributes)
    spec = window.group(1) if window else ""
    field = lambda key: re.search(key + r"=([\dx_]+)", spec)  # noqa: E731
    size = [int(v) for v in field("size").group(1).split("x")] if field("size") else []
    pads = [tuple(map(int, p.split("_"))) for p in field("pad").group(1).split("x")] if field("pad") else []
    ints = lambda key: [int(v) for v in field(key).group(1).split("x")] if field(key) else []  # noqa: E731
    strides, lhs_dilation, rhs_dilation = ints("stride"), ints("lhs_dilate"), ints("rhs_dilate")
    macs = float(out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")])
    for d in range(len(size)):
        lo, hi = pads[d] if d < len(pads) else (0, 0)
        at = lambda values: values[d] if d < len(values) else 1  # noqa: E731
        macs *= _real_taps(lhs[lhs_l.index(str(d))], size[d], lo, hi, at(strides), at(lhs_dilation),
                           at(rhs_dilation))
    return 2.0 * macs


def matmul_flops(comps: dict[str, Computation], times: dict[str, int] | None = None) -> float:
    """FLOPs of every dot and convolution per step, each counted as often as it runs."""
    times = times if times is not None else multiplicities(comps)
    total = 0.0
    for comp in comps.values():
        n = times.get(comp.name, 0)
        if not n:
            continue
        for inst in comp.instructions:
            if inst.opcode in ("dot", "convolution"):
                total += n * _conv_flops(inst, comp)
    return total


def custom_calls(comps: dict[str, Computation], times: dict[str, int] | None = None) -> dict[str, int]:
    """custom-call targets (Pallas/Mosaic kernels among them) -> executions per step."""
    times = times if times is not None else multiplicities(comps)
    out: dict[str, int] = collections.Counter()
    for comp in comps.values():
        for inst in comp.instructions:
            if inst.opcode == "custom-call" and times.get(comp.name):
                target = re.search(r'custom_call_target="([^"]+)"', inst.attributes)
                out[target.group(1) if target else "?"] += times[comp.name]
    return dict(out)


def _has_matmul(name: str, comps: dict[str, Computation], seen: set[str] | None = None) -> bool:
    """Whether computation `name`, or one it calls, holds a dot or convolution."""
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return False
    seen.add(name)
    for inst in comps[name].instructions:
        if inst.opcode in ("dot", "convolution"):
            return True
        if any(_has_matmul(c, comps, seen) for c in _callees(inst)):
            return True
    return False


def estimated_cycles(comps: dict[str, Computation], times: dict[str, int] | None = None) -> dict[str, float]:
    """XLA's TPU cost model per op: libtpu writes each scheduled op's "estimated_cycles" into
    its backend config. Summed with multiplicities, split into ops that hold a matmul (a dot
    or convolution, alone or fused) and the rest (elementwise, reductions, copies, layout
    changes). Collectives and Mosaic kernels carry no estimate. {} off TPU."""
    times = times if times is not None else multiplicities(comps)
    out = {"matmul": 0.0, "other": 0.0}
    for comp in comps.values():
        n = times.get(comp.name, 0)
        if not n:
            continue
        for inst in comp.instructions:
            cycles = re.search(r'"estimated_cycles":"(\d+)"', inst.attributes)
            if not cycles:
                continue
            matmul = inst.opcode in ("dot", "convolution") or any(_has_matmul(c, comps) for c in _callees(inst))
            out["matmul" if matmul else "other"] += n * int(cycles.group(1))
    return out if out["matmul"] or out["other"] else {}

