"""Findings and the pre-flight report (text for people, JSON for machines, an exit code for CI)."""
import collections

ERROR = "error"
WARNING = "warning"
INFO = "info"

Finding = collections.namedtuple("Finding", ["severity", "rule", "graph", "precision", "node", "op", "message", "hint"])
Finding.__doc__ = """One thing the pre-flight found: ``severity`` (error / warning / info), ``rule`` (a stable id such
as ``opset.max`` or ``qdq.zero_point``), where (``graph``, ``precision`` variant, ``node`` name, ``op`` type; any
may be None), what (``message``) and what to do (``hint``, or None)."""


def finding(severity, rule, message, graph=None, precision=None, node=None, op=None, hint=None):
    """A :class:`Finding` with keyword arguments."""
    return Finding(severity, rule, graph, precision, node, op, message, hint)


class Report(object):
    """The result of :func:`jetcap.check.preflight_bundle`; truthy when there is no error.

    Attributes:
        target: text naming the TensorRT (and device) checked against.
        table: ``{"tensorrt": ..., "source": {...}}`` of the operator table used.
        findings: list of :class:`Finding`, errors first.
        memory: the memory plan as a dict (see :mod:`jetcap.check.memory`), or None without a device.
        checked: ``[(precision, graph, file name, node count)]`` of every ONNX file read.
    """

    def __init__(self, target, table, findings, memory=None, checked=()):
        order = {ERROR: 0, WARNING: 1, INFO: 2}
        self.target = target
        self.table = table
        self.findings = sorted(findings, key=lambda f: order[f.severity])
        self.memory = memory
        self.checked = list(checked)

    def errors(self):
        return [f for f in self.findings if f.severity == ERROR]

    def warnings(self):
        return [f for f in self.findings if f.severity == WARNING]

    def __bool__(self):
        return not self.errors()

    __nonzero__ = __bool__

    def exit_code(self):
        """1 when any error was found (fails CI), else 0 (warnings are reported, not failed)."""
        return 1 if self.errors() else 0

    def to_json(self):
        return {
            "target": self.target, "table": self.table, "ok": bool(self),
            "errors": len(self.errors()), "warnings": len(self.warnings()),
            "checked": [{"precision": p, "graph": g, "file": f, "nodes": n} for p, g, f, n in self.checked],
            "findings": [dict(f._asdict()) for f in self.findings],
            "memory": self.memory,
        }

    def to_text(self):
        lines = ["pre-flight for {}".format(self.target),
                 "operator table: ONNX-TensorRT {} from {} {} ({})".format(
                     self.table["tensorrt"], self.table["source"]["repository"], self.table["source"]["ref"],
                     self.table["source"]["file"])]
        for precision, graph, name, nodes in self.checked:
            lines.append("  read {:<5} {:<14} {} ({} nodes)".format(precision, graph, name, nodes))
        if self.findings:
            lines.append("findings:")
        for f in self.findings:
            where = "/".join(str(part) for part in (f.precision, f.graph) if part)
            node = " node {!r}".format(f.node) if f.node else ""
            op = " ({})".format(f.op) if f.op else ""
            lines.append("  {:<7} [{}] {}{}{}: {}".format(f.severity.upper(), f.rule, where, node, op, f.message))
            if f.hint:
                lines.append("          -> {}".format(f.hint))
        if self.memory:
            lines.extend(_memory_lines(self.memory))
        verdict = "FAIL" if self.errors() else "OK"
        lines.append("{}: {} error(s), {} warning(s)".format(verdict, len(self.errors()), len(self.warnings())))
        return "\n".join(lines)


def _mb(value):
    return "{:.1f} MB".format(value)


def _memory_lines(memory):
    lines = ["memory plan on {} ({} MB RAM shared by CPU and GPU, {} MB kept by the OS -> {} MB for jetcap):".format(
        memory["device"], memory["ram_mb"], memory["os_reserve_mb"], memory["budget_mb"])]
    lines.append("  context (CUDA + TensorRT{}, estimate): {}".format(
        " + cuBLAS/cuDNN" if memory["tactic_libraries_on"] else "; cuBLAS/cuDNN not loaded", _mb(memory["context_mb"])))
    for entry in memory["precisions"]:
        lines.append("  {:<5} weights {:>9}  activations@max {:>9}  I/O@max {:>9}  build peak {:>9}  "
                     "runtime {:>9}  {}".format(
                         entry["precision"], _mb(entry["weights_mb"]), _mb(entry["activations_mb"]),
                         _mb(entry["io_mb"]), _mb(entry["build_peak_mb"]), _mb(entry["runtime_mb"]),
                         entry["verdict"]))
    lines.append("  builder workspace {} MB; max profile: {}".format(
        memory["workspace_mb"], ", ".join("{}={}".format(k, v) for k, v in sorted(memory["max_axes"].items()))))
    return lines
