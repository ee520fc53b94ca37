"""SentencePiece tokenization with fixed special ids; the model bytes travel inside checkpoints.

A :class:`Tokenizer` holds one joint SentencePiece model or a source and a target model. It is
built from the serialized model protos alone (``Tokenizer(src_model, tgt_model)``), so a
checkpoint that stores :meth:`Tokenizer.state_dict` rebuilds it without any file on disk.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from .config import TokenizerConfig
from .fileio import write_atomic
from .subword_sampling import SubwordSampler, model_type, sampler_for

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
SRC_FILE, TGT_FILE = "src.model", "tgt.model"


def _processor(model: bytes, role: str) -> spm.SentencePieceProcessor:
    """Load a serialized SentencePiece model and check that it uses the fixed special ids."""
    processor = spm.SentencePieceProcessor(model_proto=model)
    ids = {name: getattr(processor, f"{name}_id")() for name in SPECIAL_IDS}
    if ids != SPECIAL_IDS:
        raise ValueError(
            f"{role} SentencePiece model has special ids {ids}, expected {SPECIAL_IDS}; "
            "train it with train_tokenizer() (or --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3)"
        )
    return processor


class Tokenizer:
    """Source and target SentencePiece models (one shared model when ``joint``).

    Ids: PAD=0, UNK=1, BOS=2, EOS=3. Encoding returns pieces' ids without BOS/EOS; the data
    module adds them when it builds batches.
    """

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None) -> None:
        """Build from serialized model protos; ``tgt_model=None`` means one joint model."""
        self.src_model = bytes(src_model)
        self.tgt_model = None if tgt_model is None else bytes(tgt_model)
        self._src = _processor(self.src_model, "source")
        self._tgt = self._src if self.tgt_model is None else _processor(self.tgt_model, "target")
        self._sampler_cache: dict[tuple[float, int], tuple[SubwordSampler, SubwordSampler]] = {}

    @property
    def joint(self) -> bool:
        """Whether source and target share one model (and so one vocabulary)."""
        return self.tgt_model is None

    @property
    def src_vocab_size(self) -> int:
        """Number of source ids, specials included."""
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        """Number of target ids, specials included."""
        return self._tgt.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model bytes: equal fingerprints mean identical tokenization."""
        digest = hashlib.sha256(self.src_model)
        digest.update(b"\0" + (self.tgt_model or b""))
        return digest.hexdigest()

    def encode_src(self, texts: Sequence[str]) -> list[list[int]]:
        """Source sentences -> lists of ids (no BOS/EOS)."""
        return self._src.encode(list(texts), out_type=int)

    def encode_tgt(self, texts: Sequence[str]) -> list[list[int]]:
        """Target sentences -> lists of ids (no BOS/EOS)."""
        return self._tgt.encode(list(texts), out_type=int)

    def sample_pairs(
        self,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        seeds: Sequence[int],
        alpha: float,
        nbest_size: int,
    ) -> tuple[list[list[int]], list[list[int]]]:
        """One sampled segmentation of each pair (subword regularization), as ids without
        BOS/EOS: unigram sampling (``alpha``, ``nbest_size``) or BPE-dropout (``alpha``) as
        ``tokenizer.sampling`` describes, by :mod:`~seq2seq_attn.subword_sampling`.

        Pair ``k``'s two segmentations are a function of ``seeds[k]`` alone (a
        :class:`random.Random` seeded with it samples the source, then the target), in any
        process. Raises ValueError for a model that is neither unigram nor BPE.
        """
        src_sampler, tgt_sampler = self._samplers(alpha, nbest_size)
        src_ids, tgt_ids = [], []
        for src, tgt, seed in zip(src_texts, tgt_texts, seeds, strict=True):
            rng = random.Random(seed)
            src_ids.append(src_sampler.sample(src, rng))
            tgt_ids.append(tgt_sampler.sample(tgt, rng))
        return src_ids, tgt_ids

    def _samplers(self, alpha: float, nbest_size: int) -> tuple[SubwordSampler, SubwordSampler]:
        """The source and target samplers for these settings (built once: their tables and
        caches are reused; one shared by both sides of a joint model)."""
        key = (alpha, nbest_size)
        if key not in self._sampler_cache:
            src = sampler_for(self._src, model_type(self.src_model), alpha, nbest_size)
            tgt = src if self.tgt_model is None else sampler_for(
                self._tgt, model_type(self.tgt_model), alpha, nbest_size
            )  # fmt: skip
            self._sampler_cache[key] = src, tgt
        return self._sampler_cache[key]

    def decode_src(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Source id rows -> detokenized text (see :meth:`decode_tgt`)."""
        return self._src.decode([_strip_specials(row) for row in ids])

    def decode_tgt(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Target id rows -> detokenized text for BLEU.

        Each row is cut at its first EOS; PAD and BOS are dropped. Rows may be lists or tensors.
        """
        return self._tgt.decode([_strip_specials(row) for row in ids])

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        """Source ids -> their subword pieces (for attention pictures)."""
        return [self._src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        """Target ids -> their subword pieces (for attention pictures)."""
        return [self._tgt.id_to_piece(int(i)) for i in ids]

    def tgt_ids(self, pieces: Sequence[str]) -> list[int]:
        """Target subword pieces -> their ids (the inverse of :meth:`tgt_pieces`)."""
        return [self._tgt.piece_to_id(piece) for piece in pieces]

    def state_dict(self) -> dict[str, bytes | None]:
        """The model bytes, for a checkpoint: ``Tokenizer.from_state_dict`` rebuilds from it."""
        return {"src_model": self.src_model, "tgt_model": self.tgt_model}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, bytes | None]) -> Tokenizer:
        """Rebuild from :meth:`state_dict` (no file needed); ValueError names a field that
        holds anything but a model's bytes (``tgt_model``: or None) before it is used."""
        if not isinstance(state, Mapping):
            raise ValueError(
                f"tokenizer state is a {type(state).__name__}, not a mapping; pass the dict "
                "returned by Tokenizer.state_dict()"
            )
        for key in ("src_model", "tgt_model"):
            value = state.get(key)
            if not isinstance(value, bytes) and (key == "src_model" or value is not None):
                allowed = "bytes" if key == "src_model" else "bytes or None (one joint model)"
                raise ValueError(
                    f"tokenizer state: {key!r} holds a {type(value).__name__}, expected the "
                    f"{allowed} of a SentencePiece model; pass the dict returned by "
                    "Tokenizer.state_dict()"
                )
        return cls(state["src_model"], state.get("tgt_model"))

    def save(self, directory: str | Path) -> None:
        """Write ``src.model`` (and ``tgt.model`` when not joint) into ``directory``."""
        directory = Path(directory)
        write_atomic(directory / SRC_FILE, self.src_model)
        if self.tgt_model is not None:
            write_atomic(directory / TGT_FILE, self.tgt_model)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        src_path, tgt_path = directory / SRC_FILE, directory / TGT_FILE
        if not src_path.is_file():
            found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            raise FileNotFoundError(
                f"{src_path}: no tokenizer model; {directory} holds {found or 'nothing'}; "
                "train one with train_tokenizer() and Tokenizer.save()"
            )
        tgt_model = tgt_path.read_bytes() if tgt_path.is_file() else None
        return cls(src_path.read_bytes(), tgt_model)


def _strip_specials(row: Sequence[int]) -> list[int]:
    """Ids up to the first EOS, without PAD and BOS."""
    kept: list[int] = []
    for value in row:
        token = int(value)
        if token == EOS_ID:
            break
        if token not in (PAD_ID, BOS_ID):
            kept.append(token)
    return kept


def _train_model(texts: Iterable[str], cfg: TokenizerConfig) -> bytes:
    """Train one SentencePiece model in memory and return its serialized proto."""
    spm.set_random_generator_seed(cfg.seed)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(text for text in texts if text.strip()),
        model_writer=writer,
        model_type=cfg.type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.max_sentences,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary, not an error
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return writer.getvalue()


def train_tokenizer(
    src_texts: Iterable[str], tgt_texts: Iterable[str], cfg: TokenizerConfig
) -> Tokenizer:
    """Train SentencePiece on the training split: one joint model, or one per side.

    ``src_texts``/``tgt_texts`` are iterated once each (they may be generators over a
    memory-mapped dataset). The vocabulary may come out smaller than ``cfg.vocab_size`` on a
    small corpus.
    """
    if cfg.joint:
        tokenizer = Tokenizer(_train_model(itertools.chain(src_texts, tgt_texts), cfg))
    else:
        tokenizer = Tokenizer(_train_model(src_texts, cfg), _train_model(tgt_texts, cfg))
    logger.info(
        "trained %s %s tokenizer: %d source / %d target ids",
        "joint" if cfg.joint else "separate",
        cfg.type,
        tokenizer.src_vocab_size,
        tokenizer.tgt_vocab_size,
    )
    return tokenizer
