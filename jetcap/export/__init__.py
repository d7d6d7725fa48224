"""``jetcap export``: the user's model -> ONNX bundle (graphs, precision variants, manifest, reference data)."""
from jetcap.export.api import export_model
from jetcap.export.bundle import export_bundle
from jetcap.export.options import CalibrationMethod, Exporter, ExportOptions

__all__ = ["export_bundle", "export_model", "ExportOptions", "Exporter", "CalibrationMethod"]
