"""The bundle manifest as untrusted input: one schema check, file confinement, checksums (Python 3.6).

A bundle may come from anywhere (a copy over the network, an archive, a colleague), so nothing in its
``manifest.json`` is trusted before it is checked:

* :func:`check_manifest` (run by :class:`jetcap.runtime.manifest.Manifest` on every load, so by every
  command before anything else): types, ranges and names of every entry the runtime reads, and every
  file path relative, normalised and inside the bundle, with no symlink leading out of it.  Unknown
  extra keys are accepted (newer exporters add some); the optional ``decoder`` entry is checked for its
  shape when present.
* :func:`verify_graph_file` / :func:`verify_reference`: the sha256 of a graph file **and of every
  external-data file its ONNX refers to** (``*.onnx.data``: the references are read from the ONNX bytes
  themselves, so an unlisted weight file is found even if the manifest forgets it), and of the reference
  npz.
* :func:`require_entries`: the family entries a command needs (vocabulary, preprocessing, labels,
  tolerances), so a bundle lacking one is refused with one line instead of failing half-way.

Every problem is a :class:`jetcap.errors.BundleError` (exit code 2, one line).  No torch/onnx.
"""
import hashlib
import json
import math
import os
import re

from jetcap.errors import BundleError

MAX_OUTLIER_FRACTION = 1e-3  # the most a tolerance may let out of the element rule (jetcap.validate.metrics)

FAMILIES = ("captioner", "classifier")
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")  # = manifest.PRECISIONS (manifest imports this module)
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
RESIZE = ("bilinear", "bicubic", "nearest")
# graph, axis and model names become file and directory names (engine cache, Triton repository)
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_AXIS = 1 << 24
MAX_IMAGE_SIDE = 16384
MAX_PATH = 1024
# an ONNX StringStringEntryProto {key: "location", value: ...} as serialised: the external-data reference
_LOCATION = b"\n\x08location\x12"
_SCAN_CHUNK = 1 << 20


def _fail(what, problem):
    raise BundleError("malformed manifest: {} {}".format(what, problem))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _dict(value, what):
    if not isinstance(value, dict):
        _fail(what, "must be an object, got {}".format(type(value).__name__))
    return value


def _list(value, what, min_len=0):
    if not isinstance(value, list):
        _fail(what, "must be a list, got {}".format(type(value).__name__))
    if len(value) < min_len:
        _fail(what, "must have at least {} entr{}".format(min_len, "y" if min_len == 1 else "ies"))
    return value


def _int(value, what, low=None, high=None):
    if not _is_int(value):
        _fail(what, "must be an integer, got {!r}".format(value))
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(what, "must be between {} and {}, got {}".format(low, high, value))
    return value


def _number(value, what, low=None, positive=False):
    if not _is_number(value):
        _fail(what, "must be a finite number, got {!r}".format(value))
    if positive and value <= 0:
        _fail(what, "must be positive, got {!r}".format(value))
    if low is not None and value < low:
        _fail(what, "must be at least {}, got {!r}".format(low, value))
    return value


def _text(value, what, pattern=None, max_len=256):
    if not isinstance(value, str) or not value:
        _fail(what, "must be a non-empty string, got {!r}".format(value))
    if len(value) > max_len or any(ord(ch) < 32 for ch in value):
        _fail(what, "must be at most {} printable characters".format(max_len))
    if pattern is not None and not pattern.match(value):
        _fail(what, "{!r} is not a valid name (letters, digits, '_', '.', '-'; not starting with '.' or '-')".format(
            value))
    return value


def _one_of(value, choices, what):
    if value not in choices:
        _fail(what, "must be one of {}, got {!r}".format(", ".join(choices), value))
    return value


# -- paths ----------------------------------------------------------------------------------------
def check_relative_path(rel, what):
    """``rel`` if it is a normalised relative POSIX path with no ``..``; BundleError otherwise."""
    if not isinstance(rel, str) or not rel:
        _fail(what, "must be a relative path, got {!r}".format(rel))
    if len(rel) > MAX_PATH or "\0" in rel or "\\" in rel or any(ord(ch) < 32 for ch in rel):
        _fail(what, "{!r} is not a plain relative path".format(rel))
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        _fail(what, "{!r} is absolute; bundle paths must be relative to the bundle".format(rel))
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        _fail(what, "{!r} is not normalised or leaves the bundle ('..', '.', '//')".format(rel))
    return rel


def inside(root, path):
    """True when ``path`` (after resolving symlinks) is ``root`` or below it."""
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def bundle_file(bundle_dir, rel, what):
    """Absolute path of bundle file ``rel``; BundleError when the path, or a symlink on it, leaves the bundle."""
    check_relative_path(rel, what)
    path = os.path.join(bundle_dir, *rel.split("/"))
    if not inside(bundle_dir, path):
        raise BundleError("malformed bundle: {} {!r} leads outside the bundle (symlink?)".format(what, rel))
    return path


# -- the schema -----------------------------------------------------------------------------------
def check_manifest(data, bundle_dir):
    """Check a parsed ``manifest.json`` of the bundle in ``bundle_dir``; BundleError (one line) on the first problem.

    Files are confined here (paths and symlinks) but not hashed; :func:`verify_graph_file` hashes.
    """
    _dict(data, "the manifest")
    family = _one_of(data.get("family"), FAMILIES, "'family'")
    for key in ("graphs", "axes", "variants", "config"):
        if key not in data:
            raise BundleError("manifest lacks {!r}".format(key))
    _dict(data["config"], "'config'")
    axes = _check_axes(data["axes"])
    graphs = _check_graphs(data["graphs"], axes)
    if "graph_order" in data and data["graph_order"] is not None:
        order = _list(data["graph_order"], "'graph_order'")
        for index, name in enumerate(order):
            if not isinstance(name, str) or name not in graphs:
                _fail("graph_order[{}]".format(index), "{!r} is not a graph of the bundle".format(name))
        if len(set(order)) != len(order):
            _fail("'graph_order'", "lists a graph twice")
    _check_variants(data["variants"], graphs, bundle_dir)
    if data.get("preprocessing") is not None:
        size = _check_preprocessing(data["preprocessing"])
        _agrees(graphs, "encoder", "images", {2: size[0], 3: size[1]}, "preprocessing.image_size {}".format(size))
    if data["config"].get("input_size") is not None:
        width = _int(data["config"]["input_size"], "config.input_size", 1, 1 << 20)
        _agrees(graphs, "model", "sequence", {2: width}, "config.input_size {}".format(width))
    if data.get("vocabulary") is not None:
        _check_vocabulary(data["vocabulary"], family, graphs, data.get("decoder"))
    if data.get("labels") is not None:
        _check_labels(data["labels"], graphs if family == "classifier" else None)
    if data.get("decoding") is not None:
        decoding = _dict(data["decoding"], "'decoding'")
        if decoding.get("max_len") is not None:
            _int(decoding["max_len"], "decoding.max_len", 1, 10000)
        if decoding.get("beam_size") is not None:  # a beam's rows run in one step call: at most the max batch
            _int(decoding["beam_size"], "decoding.beam_size", 1, axes.get("batch", {}).get("max", 1024))
    if data.get("tolerances") is not None:
        _check_tolerances(data["tolerances"])
    if data.get("reference") is not None:
        reference = _dict(data["reference"], "'reference'")
        bundle_file(bundle_dir, reference.get("path"), "reference.path")
        _sha(reference.get("sha256"), "reference.sha256")
        _check_reference_cases(reference.get("cases"), graphs)
    if data.get("decoder") is not None:
        _check_decoder(data["decoder"])
    if data.get("source") is not None:
        _dict(data["source"], "'source'")


def _check_tolerances(tolerances):
    tolerances = _dict(tolerances, "'tolerances'")
    for precision, entry in tolerances.items():
        for key, value in _dict(entry, "tolerances.{}".format(precision)).items():
            what = "tolerances.{}.{}".format(precision, key)
            if key in ("atol", "rtol"):
                _number(value, what, low=0)
            elif key == "min_cosine":
                _number(value, what, low=-1)
                if value > 1:
                    _fail(what, "must be at most 1, got {!r}".format(value))
            elif key == "outlier_fraction":
                _number(value, what, low=0)
                if value > MAX_OUTLIER_FRACTION:
                    _fail(what, "must be at most {:g}, got {!r}".format(MAX_OUTLIER_FRACTION, value))
            elif key == "outlier_cap":
                _number(value, what, low=1)


def _check_axes(axes):
    axes = _dict(axes, "'axes'")
    for name, rng in axes.items():
        what = "axes.{}".format(name)
        _text(name, what, NAME)
        rng = _dict(rng, what)
        values = [_int(rng.get(level), "{}.{}".format(what, level), 1, MAX_AXIS) for level in ("min", "opt", "max")]
        if not values[0] <= values[1] <= values[2]:
            _fail(what, "needs min <= opt <= max, got {}".format(values))
    return axes


def _check_graphs(graphs, axes):
    graphs = _dict(graphs, "'graphs'")
    if not graphs:
        _fail("'graphs'", "is empty")
    for name, graph in graphs.items():
        what = "graphs.{}".format(name)
        _text(name, "graph name", NAME)
        graph = _dict(graph, what)
        for side in ("inputs", "outputs"):
            seen = set()
            for index, tensor in enumerate(_list(graph.get(side), "{}.{}".format(what, side), 1)):
                where = "{}.{}[{}]".format(what, side, index)
                tensor = _dict(tensor, where)
                tname = _text(tensor.get("name"), where + ".name")
                if tname in seen:
                    _fail(where, "repeats tensor name {!r}".format(tname))
                seen.add(tname)
                _one_of(tensor.get("dtype"), DTYPES, where + ".dtype")
                for dim in _list(tensor.get("shape"), where + ".shape"):
                    if _is_int(dim):
                        _int(dim, where + ".shape", 0, MAX_AXIS)
                    elif not isinstance(dim, str) or dim not in axes:
                        _fail(where + ".shape", "has {!r}, neither a size nor an axis of 'axes'".format(dim))
    return graphs


def _sha(value, what):
    if not isinstance(value, str) or not SHA256.match(value):
        _fail(what, "must be a lowercase hex sha256, got {!r}".format(value))


def _check_file_entry(entry, what, bundle_dir):
    entry = _dict(entry, what)
    bundle_file(bundle_dir, entry.get("path"), what + ".path")
    _sha(entry.get("sha256"), what + ".sha256")
    if entry.get("bytes") is not None:
        _int(entry["bytes"], what + ".bytes", 0)
    for index, extra in enumerate(_list(entry.get("external_data", []), what + ".external_data")):
        _check_file_entry(extra, "{}.external_data[{}]".format(what, index), bundle_dir)


def _check_variants(variants, graphs, bundle_dir):
    variants = _dict(variants, "'variants'")
    if not variants:
        _fail("'variants'", "is empty")
    for precision, variant in variants.items():
        what = "variants.{}".format(precision)
        _one_of(precision, PRECISIONS, "variant name")
        files = _dict(_dict(variant, what).get("files"), what + ".files")
        if set(files) != set(graphs):
            raise BundleError("variant {} does not list a file for every graph".format(precision))
        for graph, entry in files.items():
            _check_file_entry(entry, "{}.files.{}".format(what, graph), bundle_dir)


def _check_preprocessing(pre):
    """Check the preprocessing entry; returns its ``image_size``."""
    pre = _dict(pre, "'preprocessing'")
    size = _list(pre.get("image_size"), "preprocessing.image_size")
    if len(size) != 2:
        _fail("preprocessing.image_size", "must be [height, width], got {!r}".format(size))
    for side in size:
        _int(side, "preprocessing.image_size", 1, MAX_IMAGE_SIDE)
    if pre.get("image_size_range") is not None:
        low_high = _list(pre["image_size_range"], "preprocessing.image_size_range")
        if len(low_high) != 2 or not all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in low_high) \
                or low_high[0] > low_high[1]:
            _fail("preprocessing.image_size_range", "must be [min, max] sizes, got {!r}".format(low_high))
    if pre.get("resize") is not None:
        _one_of(pre["resize"], RESIZE, "preprocessing.resize")
    if pre.get("channel_order") is not None:
        _one_of(pre["channel_order"], ("RGB", "BGR"), "preprocessing.channel_order")
    if pre.get("layout") is not None:
        _one_of(pre["layout"], ("NCHW",), "preprocessing.layout")
    if pre.get("scale") is not None:
        _number(pre["scale"], "preprocessing.scale", positive=True)
        _bounded(pre["scale"], "preprocessing.scale", PIXEL_SCALE_RANGE)
    for key in ("mean", "std"):
        values = _list(pre.get(key), "preprocessing." + key)
        if len(values) not in (1, 3):
            _fail("preprocessing." + key, "must have 1 or 3 values, got {}".format(len(values)))
        for value in values:
            _number(value, "preprocessing." + key, positive=(key == "std"))
            if key == "std":
                _bounded(value, "preprocessing.std", PIXEL_STD_RANGE)
            elif abs(value) > PIXEL_STD_RANGE[1]:
                _fail("preprocessing.mean", "must be within +-{:g}, got {!r}".format(PIXEL_STD_RANGE[1], value))
    return size


# pixel scale (1/255 or 1) and std (0.229 or 58.4) far outside these would overflow float32 or divide by ~0
PIXEL_SCALE_RANGE = (1e-6, 1e3)
PIXEL_STD_RANGE = (1e-6, 1e6)


def _bounded(value, what, low_high):
    if not low_high[0] <= value <= low_high[1]:
        _fail(what, "must be between {:g} and {:g}, got {!r}".format(low_high[0], low_high[1], value))


def _check_vocabulary(vocab, family=None, graphs=None, decoder=None):
    vocab = _dict(vocab, "'vocabulary'")
    itos = _list(vocab.get("itos"), "vocabulary.itos", 1)
    for index, word in enumerate(itos):
        if not isinstance(word, str):
            _fail("vocabulary.itos[{}]".format(index), "must be a string, got {!r}".format(word))
    specials = _dict(vocab.get("specials", {}), "vocabulary.specials")
    for name, index in specials.items():
        _int(index, "vocabulary.specials.{}".format(name), 0, len(itos) - 1)
    if family != "captioner":
        return
    for name in ("start", "end"):
        if name not in specials:
            _fail("vocabulary.specials", "lacks {!r} (the captioner's {} token)".format(name, name))
    if specials["start"] == specials["end"]:
        _fail("vocabulary.specials", "start and end are the same token ({})".format(specials["start"]))
    log_probs = (decoder or {}).get("log_probs", "log_probs") if isinstance(decoder, dict) else "log_probs"
    for tensor in (graphs or {}).get("decoder_step", {}).get("outputs", []):
        width = tensor["shape"][-1] if tensor.get("name") == log_probs and tensor.get("shape") else None
        if _is_int(width) and width != len(itos):
            _fail("vocabulary.itos", "has {} words, but the decoder step's {} has {}".format(
                len(itos), log_probs, width))


def _check_reference_cases(cases, graphs):
    """``reference.cases``: for every graph, a non-empty list of ``{name, kind, ...}`` (the tensor checks)."""
    cases = _dict(cases, "reference.cases")
    for graph in graphs:
        entries = _list(cases.get(graph), "reference.cases.{}".format(graph), 1)
        for index, entry in enumerate(entries):
            entry = _dict(entry, "reference.cases.{}[{}]".format(graph, index))
            _text(entry.get("name"), "reference.cases.{}[{}].name".format(graph, index))
            _text(entry.get("kind"), "reference.cases.{}[{}].kind".format(graph, index))


def _check_labels(labels, graphs):
    labels = _list(labels, "'labels'", 1)
    for index, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            _fail("labels[{}]".format(index), "must be a non-empty string, got {!r}".format(label))
    if len(set(labels)) != len(labels):
        _fail("'labels'", "repeats a label")
    if graphs and len(graphs) == 1:
        outputs = list(graphs.values())[0]["outputs"]
        logits = [t for t in outputs if t["name"] == "logits"] or outputs[:1]
        shape = logits[0]["shape"]
        if shape and _is_int(shape[-1]) and shape[-1] != len(labels):
            _fail("'labels'", "has {} names but the model outputs {} classes".format(len(labels), shape[-1]))


def _check_decoder(decoder):
    decoder = _dict(decoder, "'decoder'")
    for key in ("word_input", "log_probs"):
        _text(decoder.get(key), "decoder." + key)
    if decoder.get("attention") is not None:
        _text(decoder["attention"], "decoder.attention")
    for key, fields in (("state", ("input", "output", "init")), ("context", ("input", "init"))):
        for index, entry in enumerate(_list(decoder.get(key, []), "decoder." + key)):
            where = "decoder.{}[{}]".format(key, index)
            entry = _dict(entry, where)
            for field in fields:
                _text(entry.get(field), "{}.{}".format(where, field))


# -- what a command needs -------------------------------------------------------------------------
REQUIRED = {
    ("captioner", "caption"): ("vocabulary", "preprocessing"),
    ("classifier", "predict"): ("labels",),
    ("captioner", "bench"): ("vocabulary", "preprocessing"),  # timing a classifier needs no class names
    ("captioner", "validate"): ("vocabulary", "preprocessing", "tolerances", "task_thresholds", "reference"),
    ("classifier", "validate"): ("labels", "tolerances", "task_thresholds", "reference"),
}


def _agrees(graphs, graph, name, dims, what):
    """Fail when graph input ``name``'s fixed dimensions ``{axis: size}`` differ from what the manifest says
    elsewhere (``what``): every request would then be refused by the graph (a dynamic axis agrees)."""
    for tensor in graphs.get(graph, {}).get("inputs", []):
        if tensor.get("name") == name:
            shape = tensor.get("shape") or []
            for axis, size in dims.items():
                if axis < len(shape) and isinstance(shape[axis], int) and shape[axis] != size:
                    _fail(what, "disagrees with the {} graph's input {} {}".format(graph, name, shape))


def require_entries(manifest, purpose):
    """BundleError naming the first manifest entry that ``purpose`` ("caption", "predict", "validate",
    "bench") needs and ``manifest`` (a :class:`Manifest`) lacks; for validate also a tolerance and task
    thresholds per variant.  (Entries that disagree with the graphs are refused at load, by :func:`check_manifest`.)"""
    data = manifest.data
    for key in REQUIRED.get((manifest.family, purpose), ()):
        if data.get(key) in (None, [], {}):
            raise BundleError("malformed manifest: {} bundle lacks {!r}, needed to {}".format(
                manifest.family, key, purpose), hint="re-export the bundle")
    if manifest.family == "classifier" and purpose in ("predict", "validate", "bench") and \
            data["config"].get("input_size") is None:  # checked against the graph at load when present
        raise BundleError("malformed manifest: classifier bundle lacks config.input_size, needed to {}".format(
            purpose), hint="re-export the bundle")
    if purpose == "validate":
        for precision in data["variants"]:
            for key in ("tolerances", "task_thresholds"):
                if not isinstance(data[key], dict) or not isinstance(data[key].get(precision), dict):
                    raise BundleError("malformed manifest: {} bundle lacks {!r} for the {} variant, needed to "
                                      "validate".format(manifest.family, key, precision), hint="re-export the bundle")


# -- checksums ------------------------------------------------------------------------------------
def _hash_and_scan(path):
    """(sha256, [external-data locations]) of an ONNX file, read once in chunks."""
    import hashlib

    digest = hashlib.sha256()
    locations = []
    tail = b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(_SCAN_CHUNK)
            if not block:
                break
            digest.update(block)
            window = tail + block
            start = 0
            while True:
                at = window.find(_LOCATION, start)
                if at < 0:
                    break
                location = _read_string(window, at + len(_LOCATION))
                if location is None:  # cut by the chunk end: found again in the next window
                    break
                if location not in locations:
                    locations.append(location)
                start = at + 1
            tail = window[-(MAX_PATH + 32):]
    return digest.hexdigest(), locations


def _read_string(buf, pos):
    """A protobuf length-delimited string at ``pos`` (varint length first); None when cut off."""
    length, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 28:
            return None
        byte = buf[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if length > MAX_PATH:
        return "<overlong>"
    if pos + length > len(buf):
        return None
    return buf[pos:pos + length].decode("utf-8", "replace")


def _file_sha(path):
    from jetcap.util.fsio import sha256_file

    return sha256_file(path)


def _existing(path, rel, what):
    if not os.path.isfile(path):
        raise BundleError("bundle file missing: {} ({} {!r})".format(path, what, rel))
    return path


def verify_graph_file(bundle_dir, entry, label):
    """Check the sha256 of one graph file and of every external-data file it refers to.

    Args:
        bundle_dir: the bundle directory.
        entry: the manifest's ``{path, sha256, external_data?}`` of the file.
        label: how messages name it, e.g. ``"fp32 encoder"``.
    Returns:
        the graph file's sha256.
    """
    path = _existing(bundle_file(bundle_dir, entry["path"], label), entry["path"], label)
    actual, locations = _hash_and_scan(path)
    if actual != entry["sha256"]:
        raise BundleError("{} does not match its manifest checksum (modified or corrupt)".format(path))
    listed = {}
    graph_dir = os.path.dirname(entry["path"])
    for extra in entry.get("external_data") or []:
        listed[extra["path"]] = extra
    for location in locations:
        rel = location if not graph_dir else graph_dir + "/" + location
        try:
            check_relative_path(rel, "external data")
        except BundleError:
            raise BundleError("{} ({}) refers to external data {!r} outside the bundle".format(path, label, location))
        if rel not in listed:
            raise BundleError("{} ({}) refers to external data {!r} that the manifest does not checksum".format(
                path, label, location), hint="re-export the bundle")
    for rel, extra in sorted(listed.items()):
        extra_path = _existing(bundle_file(bundle_dir, rel, label + " external data"), rel, label + " external data")
        if _file_sha(extra_path) != extra["sha256"]:
            raise BundleError("{} (external data of {}) does not match its manifest checksum (modified or corrupt)"
                              .format(extra_path, label))
    return actual


def verify_reference(bundle_dir, reference):
    """Absolute path of the reference npz after checking its sha256 (BundleError on mismatch)."""
    path = _existing(bundle_file(bundle_dir, reference["path"], "reference"), reference["path"], "reference")
    if _file_sha(path) != reference["sha256"]:
        raise BundleError("{} (reference data) does not match its manifest checksum (modified or corrupt)".format(path))
    return path


# -- what the reference was made with -----------------------------------------------------------------
# manifest entries that decide what a bundle's results mean beyond its graphs (the words, the class names,
# how an image becomes a tensor, the default search, how strict validate is, which reference cases gate):
# export records their digests in reference.npz; validate fails a bundle whose manifest no longer has them
DIGESTED_ENTRIES = ("labels", "vocabulary", "preprocessing", "decoding", "tolerances", "task_thresholds")
ENTRIES_KEY = "meta/entries"


def _digest(value):
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_digests(data, cases):
    """``{entry: sha256}`` of the manifest ``data``'s entries that give its results their meaning
    (:data:`DIGESTED_ENTRIES`, what a classifier's output holds, and the reference ``cases``)."""
    out = dict((key, _digest(data.get(key))) for key in DIGESTED_ENTRIES)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    out["config.scores"] = _digest(config.get("scores", "logits"))
    out["reference.cases"] = _digest(cases)
    return out


def changed_entries(data, recorded):
    """``(changed, unchecked)``: the entries of manifest ``data`` whose digest differs from ``recorded`` (a JSON
    text, as export stored it), and those only one side knows (another jetcap version records other
    entries: not a change), each sorted; BundleError when ``recorded`` is not such a text."""
    try:
        stored = json.loads(str(recorded))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise BundleError("the reference's record of the manifest entries is not readable", hint="re-export the bundle")
    current = entry_digests(data, (data.get("reference") or {}).get("cases"))
    return (sorted(key for key in set(stored) & set(current) if stored[key] != current[key]),
            sorted(set(stored) ^ set(current)))

