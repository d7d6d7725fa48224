"""Recompute a bundle's reference with PyTorch, from the user's own model (needs torch).

The model comes from the same sources as at export (:mod:`jetcap.models.sources`: ``--model``,
``--trust-pickle``, a built-in family) and runs through the same adapter, so ``validate --checkpoint``
compares the bundle with the user's code: a bundle exported from a rebuild that does not compute what
the user's code computes fails here.
"""
from types import SimpleNamespace

from jetcap.errors import UsageError, ValidationFailed


def _subject_options(manifest, options):
    """Export options for the subject, taken from what the bundle recorded at export."""
    config = manifest.config
    preprocessing = manifest.preprocessing
    size = preprocessing.get("image_size")
    return SimpleNamespace(
        family=manifest.family, adapter=options.get("adapter"), output=config.get("logits_output"),
        input_size=config.get("input_size"), image_size=int(size[0]) if isinstance(size, list) else size,
        mean=preprocessing.get("mean") or config.get("mean"), std=preprocessing.get("std") or config.get("std"),
        caption_max_len=manifest.decoding.get("max_len"),
        seq_len=(((manifest.axes.get("T") or {}).get("min")), None, config.get("max_len")), seed=0,
        dynamic_image_size=False)


def load_reference_subject(manifest, checkpoint, checkpoint_options):
    """The export subject of the user's model for ``manifest``'s bundle (see module docstring)."""
    from jetcap.util.lazy import require

    require("torch")  # --checkpoint needs PyTorch: say what to install rather than fail on import
    from jetcap.export.subject import BuiltinSubject, is_builtin, make_subject
    from jetcap.models.sources import SourceOptions, resolve_source

    options = dict(checkpoint_options or {})
    source_entry = manifest.data.get("source") or {}
    if source_entry.get("kind") == "user code" and not (options.get("models") or options.get("trust_pickle")):
        raise UsageError("this bundle was exported from your code ({}): pass the export's --model (or "
                         "--trust-pickle) and --code-path with --checkpoint".format(
                             str(source_entry.get("model") or "user code")[:200]))
    recorded = manifest.data.get("adapter") or {}
    if recorded.get("file") and not options.get("adapter"):
        raise UsageError("this bundle was exported with the adapter file {} (sha256 {}...): pass it again with "
                         "--adapter PATH, so the reference runs your decoder the same way".format(
                             recorded["file"], str(recorded.get("sha256", ""))[:12]))
    source = resolve_source(SourceOptions(
        checkpoint=checkpoint, family=manifest.family, models=dict(options.get("models") or {}),
        model_args=options.get("model_args"), trust_pickle=bool(options.get("trust_pickle")),
        code_path=options.get("code_path"), word_map=options.get("word_map"), labels=options.get("labels")))
    _same_names(manifest, source)
    if is_builtin(source):
        loaded = source.builtin
        for key in ("vocab_size", "decoder_dim", "num_classes", "input_size", "hidden_size"):
            if key in manifest.config and loaded.config.get(key) != manifest.config[key]:
                raise UsageError("checkpoint does not match the bundle: {} is {} in the checkpoint, {} in the "
                                 "bundle".format(key, loaded.config.get(key), manifest.config[key]))
        return BuiltinSubject(source, dict(loaded.config, **manifest.config))
    if manifest.family == "captioner" and source.vocab is None:
        source.vocab = manifest.vocabulary()
    return make_subject(source, _subject_options(manifest, options))


def _same_names(manifest, source):
    """ValidationFailed when the checkpoint (or the --labels / --word-map given with it) names its classes
    or words otherwise than the bundle does: the same logits would then be printed as other signs."""
    if manifest.family == "classifier":
        ours, theirs, what = manifest.labels, source.labels, "class names"
    else:
        ours = manifest.vocabulary().itos
        theirs, what = (source.vocab.itos if source.vocab is not None else None), "vocabulary"
    if theirs is None or ours is None or list(theirs) == list(ours):
        return
    if len(theirs) != len(ours):
        detail = "{} in the bundle, {} in the checkpoint".format(len(ours), len(theirs))
    else:
        index = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        detail = "id {} is {!r} in the bundle, {!r} in the checkpoint".format(index, ours[index], theirs[index])
    raise ValidationFailed("the bundle's {} are not the checkpoint's ({}): the bundle would name its answers "
                           "wrongly".format(what, detail),
                           hint="exported with --labels / --word-map? pass the same file to validate")


def _same_graphs(manifest, subject):
    """ValidationFailed when the model's graphs do not have the bundle's inputs and outputs."""
    for spec in subject.graphs:
        bundle = manifest.graph(spec.name)
        ours = spec.manifest_entry()
        for side in ("inputs", "outputs"):
            theirs = [(t["name"], list(t["shape"])) for t in bundle[side]]
            mine = [(t["name"], list(t["shape"])) for t in ours[side]]
            if theirs != mine:
                raise ValidationFailed(
                    "the bundle's {} {} are {} but your model's are {}: the bundle was not exported from this "
                    "model".format(spec.name, side, theirs, mine))


def live_reference(manifest, stored, checkpoint, checkpoint_options, seed=None):
    """``stored`` with every output (sweep and task) recomputed by the user's model on the stored inputs.

    With ``seed``, fresh random inputs are also drawn (the subject's dummy-input generators) at the
    axes of every stored random case, added as ``seed<N>_...`` cases (to ``manifest.data`` in memory
    only) with their PyTorch outputs.
    """
    import numpy as np

    from jetcap.export.sweep import torch_outputs
    from jetcap.export.tasks import _pad, subject_probabilities

    subject = load_reference_subject(manifest, checkpoint, checkpoint_options)
    _same_graphs(manifest, subject)
    out = dict(stored)
    for graph, cases in manifest.data["reference"]["cases"].items():
        module, spec = subject.graph_module(graph), subject.spec(graph)
        for case in cases:
            prefix = "sweep/{}/{}/".format(graph, case["name"])
            feed = dict((k[len(prefix) + 3:], v) for k, v in stored.items() if k.startswith(prefix + "in/"))
            for name, value in torch_outputs(module, spec, feed).items():
                if name not in subject.derived_outputs:
                    out[prefix + "out/" + name] = value
    if seed is not None:
        for graph, cases in manifest.data["reference"]["cases"].items():
            module, spec = subject.graph_module(graph), subject.spec(graph)
            for i, case in enumerate([c for c in cases if c["kind"] == "random"]):
                name = "seed{}_{}".format(seed, case["name"])
                feed = subject.dummy_inputs(graph, case["axes"], seed=int(seed) * 1000 + i)
                prefix = "sweep/{}/{}/".format(graph, name)
                for key, value in feed.items():
                    out[prefix + "in/" + key] = value
                for key, value in torch_outputs(module, spec, feed).items():
                    if key not in subject.derived_outputs:
                        out[prefix + "out/" + key] = value
                cases.append({"name": name, "kind": "random", "axes": case["axes"]})
    if manifest.family == "captioner":
        images = stored["task/images"]
        max_len = int(manifest.decoding.get("max_len", 20))
        out["task/greedy_tokens"] = _pad([h.tokens for h in subject.caption(images, max_len)])
        out["task/beam_tokens"] = _pad([h.tokens for h in subject.caption(
            images, max_len, beam_size=int(stored["task/beam_size"]))])
    else:
        for i in range(int(stored["task/count"])):
            seq = stored["task/seq_{:03d}".format(i)]
            out["task/probs_{:03d}".format(i)] = np.asarray(subject_probabilities(subject, seq[None])[0])
    return out


def torch_task_reference(subject, manifest, images=None, sequences=None, beam_size=3):
    """PyTorch task results of the user's model: captions (greedy, beam) of images or probabilities of
    sequences (``validate --data``)."""
    from jetcap.export.tasks import subject_probabilities

    if images is not None:
        max_len = int(manifest.decoding.get("max_len", 20))
        return {"greedy": [h.tokens for h in subject.caption(images, max_len)],
                "beam": [h.tokens for h in subject.caption(images, max_len, beam_size=beam_size)]}
    return {"probs": [subject_probabilities(subject, s[None])[0] for s in sequences]}
