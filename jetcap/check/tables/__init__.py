"""The ONNX-TensorRT operator support matrix of each TensorRT release, kept as data (``trt-<release>.json``).

Each table was made from ``docs/operators.md`` of one onnx-tensorrt release branch (operator names, whether
supported, the tensor types listed) plus the restrictions its importers enforce that can be checked on the
ONNX file alone, written as rule parameters (``rules``).  ``source`` records the branch, file and URL.

A TensorRT version uses the newest table released at or before it (10.3 -> the 10.x table); versions older
than the oldest table are refused.
"""
import json
import os

from jetcap.errors import UsageError
from jetcap.runtime.backends.trt_api import format_version, parse_version

TABLE_DIR = os.path.dirname(os.path.abspath(__file__))


class OperatorTable(object):
    """One release's matrix: ``operators`` {op: [ONNX type names]}, ``unsupported`` ops, ``opset`` range,
    ``rules`` (rule parameters) and ``source`` (where it came from)."""

    def __init__(self, data):
        self.release = parse_version(data["tensorrt"])
        self.operators = data["operators"]
        self.unsupported = set(data["unsupported"])
        self.opset_min = int(data["opset"]["min"])
        self.opset_max = int(data["opset"]["max"])
        self.rules = data["rules"]
        self.source = data["source"]
        self.checked_version = self.release  # the TensorRT version being checked (set by load_table)

    @property
    def name(self):
        """The release this table was made for (``"10.0"`` serves 10.3)."""
        return format_version(self.release)

    @property
    def checked_name(self):
        """The TensorRT version being checked with this table (``"10.3"``)."""
        return format_version(self.checked_version)

    def supports(self, op_type):
        """True / False when the matrix lists ``op_type``; None when it does not mention it."""
        if op_type in self.operators:
            return True
        if op_type in self.unsupported:
            return False
        return None

    def types(self, op_type):
        """ONNX type names the matrix lists for ``op_type`` (empty when none are listed)."""
        return set(self.operators.get(op_type) or ())


def available_releases():
    """Releases with a table, oldest first, as version tuples."""
    releases = []
    for name in os.listdir(TABLE_DIR):
        if name.startswith("trt-") and name.endswith(".json"):
            releases.append(parse_version(name[len("trt-"):-len(".json")]))
    return sorted(releases)


def load_table(version):
    """The :class:`OperatorTable` for TensorRT ``version`` (str or tuple).

    Raises:
        UsageError: ``version`` is older than every table (e.g. 8.0 of JetPack 4.6 GA).
    """
    version = parse_version(version)
    usable = [release for release in available_releases() if release[:2] <= version[:2]]
    if not usable:
        raise UsageError(
            "no ONNX-TensorRT operator table for TensorRT {} (tables: {})".format(
                format_version(version), ", ".join(format_version(r) for r in available_releases())),
            hint="JetPack 4.6 GA ships TensorRT 8.0; JetPack 4.6.1 and later ship 8.2, which jetcap checks")
    release = usable[-1]
    with open(os.path.join(TABLE_DIR, "trt-{}.json".format(format_version(release))), "r") as handle:
        table = OperatorTable(json.load(handle))
    table.checked_version = version
    return table
