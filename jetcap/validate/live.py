"""Recompute a bundle's reference outputs with PyTorch from a checkpoint (needs torch)."""
from jetcap.errors import UsageError


def load_reference_model(manifest, checkpoint, checkpoint_options):
    """The checkpoint's model, refusing one of another family or with another configuration."""
    from jetcap.util.lazy import require

    require("torch")  # --checkpoint needs PyTorch: say what to install rather than fail on import
    from jetcap.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, manifest.family, **checkpoint_options)
    for key in ("vocab_size", "decoder_dim", "num_classes", "input_size", "hidden_size"):
        if key in manifest.config and loaded.config.get(key) != manifest.config[key]:
            raise UsageError("checkpoint does not match the bundle: {} is {} in the checkpoint, {} in the bundle".format(
                key, loaded.config.get(key), manifest.config[key]))
    return loaded


def torch_task_reference(loaded, manifest, images=None, sequences=None, beam_size=3):
    """PyTorch task results: captions (greedy, beam) of images or probabilities of sequences."""
    import torch

    with torch.no_grad():
        if images is not None:
            vocab = manifest.vocabulary()
            max_len = int(manifest.decoding.get("max_len", 20))
            batch = torch.from_numpy(images)
            greedy = loaded.model.caption(batch, vocab.start_id, vocab.end_id, max_len)
            beam = loaded.model.caption(batch, vocab.start_id, vocab.end_id, max_len, beam_size=beam_size)
            return {"greedy": [h.tokens for h in greedy], "beam": [h.tokens for h in beam]}
        probs = [torch.softmax(loaded.model(torch.from_numpy(s[None]))[0], dim=1).numpy()[0] for s in sequences]
        return {"probs": probs}


def live_reference(manifest, stored, checkpoint, checkpoint_options, seed=None):
    """``stored`` with every output (sweep and task) recomputed by PyTorch on the stored inputs.

    With ``seed``, fresh random inputs are also drawn (the family's dummy-input generators) at the
    axes of every stored random case, added as ``seed<N>_...`` cases (to ``manifest.data`` in memory
    only) with their PyTorch outputs.
    """
    import numpy as np

    from jetcap.export.sweep import torch_outputs
    from jetcap.export.tasks import _pad

    loaded = load_reference_model(manifest, checkpoint, checkpoint_options)
    family = loaded.family
    specs = dict((g.name, g) for g in family.graphs(dict(loaded.config, **manifest.config)))
    out = dict(stored)
    for graph, cases in manifest.data["reference"]["cases"].items():
        module = family.graph_module(loaded.model.eval(), graph)
        for case in cases:
            prefix = "sweep/{}/{}/".format(graph, case["name"])
            feed = dict((k[len(prefix) + 3:], v) for k, v in stored.items() if k.startswith(prefix + "in/"))
            for name, value in torch_outputs(module, specs[graph], feed).items():
                out[prefix + "out/" + name] = value
    if seed is not None:
        config = dict(loaded.config, **manifest.config)
        for graph, cases in manifest.data["reference"]["cases"].items():
            module = family.graph_module(loaded.model.eval(), graph)
            for i, case in enumerate([c for c in cases if c["kind"] == "random"]):
                name = "seed{}_{}".format(seed, case["name"])
                feed = family.dummy_inputs(config, graph, case["axes"], seed=int(seed) * 1000 + i)
                prefix = "sweep/{}/{}/".format(graph, name)
                for key, value in feed.items():
                    out[prefix + "in/" + key] = value
                for key, value in torch_outputs(module, specs[graph], feed).items():
                    out[prefix + "out/" + key] = value
                cases.append({"name": name, "kind": "random", "axes": case["axes"]})
    if manifest.family == "captioner":
        result = torch_task_reference(loaded, manifest, images=stored["task/images"],
                                      beam_size=int(stored["task/beam_size"]))
        out["task/greedy_tokens"] = _pad(result["greedy"])
        out["task/beam_tokens"] = _pad(result["beam"])
    else:
        count = int(stored["task/count"])
        seqs = [stored["task/seq_{:03d}".format(i)] for i in range(count)]
        for i, p in enumerate(torch_task_reference(loaded, manifest, sequences=seqs)["probs"]):
            out["task/probs_{:03d}".format(i)] = np.asarray(p)
    return out
