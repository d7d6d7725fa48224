"""The Python API: export a model the user built in their own script."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from jetcap.export.bundle import export_bundle
from jetcap.export.options import ExportOptions


def export_model(model: Any, out_dir: Union[str, Path], family: Optional[str] = None,
                 word_map: Union[None, str, Path, Mapping[str, int]] = None,
                 labels: Union[None, str, Path, List[str]] = None, config: Optional[Mapping[str, Any]] = None,
                 log: Callable[[str], None] = lambda message: None, **options: Any) -> Dict[str, Any]:
    """Export ``model`` -- an ``nn.Module``, or ``{"encoder": ..., "decoder": ...}`` parts -- to a bundle.

    Args:
        model: the user's module(s), weights loaded (put in eval mode here).
        out_dir: the bundle directory to create.
        family: "captioner" or "classifier"; default: a captioner when parts or a word map are given.
        word_map: captioner vocabulary: a ``{word: id}`` dict or a JSON file.
        labels: classifier class names: a list or a file.
        config: values the model does not tell (``image_size``, ``mean``, ``std``, ``max_len``, ...),
            read like a checkpoint's stored config.
        log: progress lines.
        options: any other :class:`jetcap.export.ExportOptions` field (``precisions``, ``adapter``,
            ``output``, ``max_batch``, ``opset``, ``image_size``, ``force``, ...).
    Returns:
        the export summary (as ``jetcap export --json`` prints it).
    """
    from jetcap.models.sources import source_from_modules

    source = source_from_modules(model, family=family, word_map=word_map, labels=labels, config=config)
    opts = ExportOptions(checkpoint=None, out_dir=Path(out_dir), family=family, **options)
    return export_bundle(opts, log=log, source=source)
