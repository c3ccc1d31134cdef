"""The rewrite report: per captured graph, every attention and linear site, rewritten or not and why.

report = rocm_attn.explain(model, input_ids)
print(report)                 # a table
report.to_dict()              # JSON-able
report.attention_rewritten, report.attention_total, report.linear_rewritten, report.linear_total
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from dataclasses import asdict, dataclass, field


@dataclass
class Site:
    kind: str  # "attention" | "linear"
    pattern: str  # sdpa | eager | linear | addmm | mm
    node: str
    module: str
    rewritten: bool
    reason: str = ""  # why not (or how, e.g. "fused into qkv group")
    detail: dict = field(default_factory=dict)


@dataclass
class PassRecord:
    name: str
    matches: int = 0
    seconds: float = 0.0
    error: str = ""  # set when the pass raised and the graph compiled without it


@dataclass
class GraphReport:
    index: int
    nodes_before: int = 0
    nodes_after: int = 0
    sites: list[Site] = field(default_factory=list)
    passes: list[PassRecord] = field(default_factory=list)
    fusions: dict[str, int] = field(default_factory=dict)  # post-grad fusion match counts
    memory: dict[str, int] = field(default_factory=dict)  # original/bf16/fp8 bytes of rewritten weights
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    config: dict = field(default_factory=dict)
    graphs: list[GraphReport] = field(default_factory=list)
    graph_breaks: int = 0
    break_reasons: list[str] = field(default_factory=list)
    fresh_compile: bool = False  # explain(): bypass the FX graph cache so the fusion pass runs

    def _count(self, kind: str, rewritten: bool | None = None) -> int:
        return sum(
            1
            for g in self.graphs
            for s in g.sites
            if s.kind == kind and (rewritten is None or s.rewritten == rewritten)
        )

    @property
    def attention_total(self) -> int:
        return self._count("attention")

    @property
    def attention_rewritten(self) -> int:
        return self._count("attention", True)

    @property
    def linear_total(self) -> int:
        return self._count("linear")

    @property
    def linear_rewritten(self) -> int:
        return self._count("linear", True)

    @property
    def fusions(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for g in self.graphs:
            for k, v in g.fusions.items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def memory(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for g in self.graphs:
            for k, v in g.memory.items():
                total[k] = total.get(k, 0) + v
        return total

    @property
    def errors(self) -> list[str]:
        return [f"graph {g.index}: {p.name}: {p.error}" for g in self.graphs for p in g.passes if p.error]

    def sites(self, kind: str | None = None) -> list[Site]:
        return [s for g in self.graphs for s in g.sites if kind is None or s.kind == kind]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            attention_rewritten=self.attention_rewritten,
            attention_total=self.attention_total,
            linear_rewritten=self.linear_rewritten,
            linear_total=self.linear_total,
            fusions=self.fusions,
            memory=self.memory,
            errors=self.errors,
        )
        return json.loads(json.dumps(d, default=str))

    def __str__(self) -> str:
        lines = [
            f"rocm_attn report: {len(self.graphs)} graph(s), {self.graph_breaks} graph break(s)",
            f"  attention rewritten {self.attention_rewritten}/{self.attention_total}, "
            f"linear rewritten {self.linear_rewritten}/{self.linear_total}",
        ]
        mem = self.memory
        if mem.get("fp8_bytes"):
            lines.append(
                f"  rewritten weights: {mem['fp8_bytes'] / 2**20:.2f} MiB fp8+scales vs "
                f"{mem['bf16_bytes'] / 2**20:.2f} MiB bf16 "
                f"({mem['original_bytes'] / 2**20:.2f} MiB as loaded)"
            )
        if self.fusions:
            lines.append("  fusions: " + ", ".join(f"{k}={v}" for k, v in sorted(self.fusions.items())))
        for r in self.break_reasons:
            lines.append(f"  graph break: {r}")
        for e in self.errors:
            lines.append(f"  PASS FAILED (graph compiled without it): {e}")
        header = f"  {'graph':>5} {'kind':<9} {'pattern':<8} {'rewritten':<9} {'module':<40} reason"
        lines.append(header)
        lines.append("  " + "-" * (len(header) + 20))
        for g in self.graphs:
            for s in g.sites:
                lines.append(
                    f"  {g.index:>5} {s.kind:<9} {s.pattern:<8} {'yes' if s.rewritten else 'NO':<9} "
                    f"{(s.module or s.node)[-40:]:<40} {s.reason}"
                )
            for note in g.notes:
                lines.append(f"  {g.index:>5} note: {note}")
        return "\n".join(lines)

    __repr__ = __str__


# The report the backend appends to (explain() sets one; otherwise each compile gets its own).
_active: contextvars.ContextVar[Report | None] = contextvars.ContextVar("rocm_attn_report", default=None)
# The graph report being built (the post-grad pass adds its fusion counts to it).
_current_graph: contextvars.ContextVar[GraphReport | None] = contextvars.ContextVar(
    "rocm_attn_graph", default=None
)
# Reports of recent compiles, newest last (bounded), for users who compiled with torch.compile.
recent: list[Report] = []


@contextlib.contextmanager
def collecting(report: Report):
    token = _active.set(report)
    try:
        yield report
    finally:
        _active.reset(token)


def active_report() -> Report | None:
    return _active.get()


@contextlib.contextmanager
def building(graph: GraphReport):
    token = _current_graph.set(graph)
    try:
        yield graph
    finally:
        _current_graph.reset(token)


def current_graph() -> GraphReport | None:
    return _current_graph.get()


def remember(report: Report, keep: int = 16) -> None:
    recent.append(report)
    del recent[:-keep]
