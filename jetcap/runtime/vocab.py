"""Caption vocabularies: word <-> id maps with the special tokens a decoder needs (Python 3.6)."""
from jetcap.errors import UsageError

# Accepted spellings of the special tokens, first one is canonical: Show-Attend-Tell's <start>/<end>,
# seq2seq's <sos>/<eos> and <bos>, sentencepiece/fairseq's <s>/</s>, the Keras captioning tutorials'
# startseq/endseq and TensorFlow's [start]/[end].
SPECIAL_SPELLINGS = {
    "start": ("<start>", "<SOS>", "<sos>", "<bos>", "<BOS>", "<s>", "startseq", "[start]", "[START]"),
    "end": ("<end>", "<EOS>", "<eos>", "</s>", "endseq", "[end]", "[END]"),
    "pad": ("<pad>", "<PAD>", ""),  # "": TensorFlow's TextVectorization pads with the empty string
    "unk": ("<unk>", "<UNK>", "[UNK]"),
}
UNUSED = "<unused{}>"  # ids a word map leaves without a word (Keras' Tokenizer keeps 0 for padding)


class Vocabulary(object):
    """An id -> word list plus the ids of <start>, <end>, <pad> and <unk>.

    Args:
        itos: list of words indexed by id.
        specials: dict with keys ``start``, ``end`` and optionally ``pad`` and ``unk`` mapping to ids.
    """

    def __init__(self, itos, specials):
        self.itos = [str(w) for w in itos]
        missing = [k for k in ("start", "end") if specials.get(k) is None]
        if missing:
            raise UsageError("vocabulary lacks the special token(s) {} (accepted spellings: {})".format(
                ", ".join(missing), "; ".join("{}: {}".format(k, " ".join(SPECIAL_SPELLINGS[k])) for k in missing)),
                hint="rename them in the word map")
        for key, idx in specials.items():
            if idx is not None and not 0 <= int(idx) < len(self.itos):
                raise UsageError("special token {} has id {} outside the vocabulary of {}".format(key, idx, len(self.itos)))
        self.specials = dict((k, int(v)) for k, v in specials.items() if v is not None)
        self.stoi = dict((w, i) for i, w in enumerate(self.itos))

    @property
    def start_id(self):
        return self.specials["start"]

    @property
    def end_id(self):
        return self.specials["end"]

    @property
    def pad_id(self):
        """The padding id, or None when the vocabulary has none (a decoder never needs to emit one)."""
        return self.specials.get("pad")

    @property
    def unk_id(self):
        return self.specials.get("unk")

    def __len__(self):
        return len(self.itos)

    @classmethod
    def from_word_map(cls, word_map):
        """From a ``{word: id}`` dict using any accepted spelling of the special tokens."""
        if not isinstance(word_map, dict) or not word_map:
            raise UsageError("a word map must be a non-empty {word: id} mapping")
        size = max(int(v) for v in word_map.values()) + 1
        itos = [UNUSED.format(i) for i in range(size)]
        for word, idx in word_map.items():
            itos[int(idx)] = str(word)
        return cls.from_itos(itos)

    @classmethod
    def from_itos(cls, itos):
        """From an id -> word list, finding the special tokens by their accepted spellings."""
        itos = [str(w) for w in itos]
        lookup = dict((w, i) for i, w in enumerate(itos))
        specials = {}
        for key, spellings in SPECIAL_SPELLINGS.items():
            for spelling in spellings:
                if spelling in lookup:
                    specials[key] = lookup[spelling]
                    break
        if "pad" not in specials and itos and itos[0] == UNUSED.format(0):
            specials["pad"] = 0  # Keras' Tokenizer: word ids from 1, 0 is padding
        return cls(itos, specials)

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict` (the manifest form)."""
        return cls(data["itos"], data["specials"])

    def to_dict(self):
        return {"itos": list(self.itos), "specials": dict(self.specials)}

    def encode(self, words):
        """Ids of ``words`` (a list or a whitespace-separated string); unknown words map to <unk>."""
        if isinstance(words, str):
            words = words.split()
        ids = []
        for word in words:
            if word in self.stoi:
                ids.append(self.stoi[word])
            elif self.unk_id is not None:
                ids.append(self.unk_id)
            else:
                raise UsageError("word {!r} is not in the vocabulary and there is no <unk>".format(word))
        return ids

    def decode(self, ids):
        """The caption text of ``ids``, stopping at <end> and skipping <start>/<pad>."""
        words = []
        for idx in ids:
            idx = int(idx)
            if idx == self.end_id:
                break
            if idx == self.start_id or idx == self.pad_id:
                continue
            words.append(self.itos[idx])
        return " ".join(words)
