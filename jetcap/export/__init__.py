"""``jetcap export``: checkpoint -> ONNX bundle (graphs, precision variants, manifest, reference data)."""
from jetcap.export.bundle import export_bundle
from jetcap.export.options import CalibrationMethod, Exporter, ExportOptions

__all__ = ["export_bundle", "ExportOptions", "Exporter", "CalibrationMethod"]
