"""Vocabularies of the mpt tasks: T5's SentencePiece model (a gin binding) or bytes.

Tasks are registered when ``mpt_jax.tasks`` is imported, which in a T5X run happens while
gin files are still being parsed, before the bindings below are applied. So the tasks
hold :data:`TASK_VOCABULARY`, a :class:`ConfiguredVocabulary` that builds the real
vocabulary from :func:`output_vocabulary` the first time it is used::

    # gin
    output_vocabulary.kind = 't5'                      # or 'byte' (tests, embedded demo)
    t5_vocabulary.sentencepiece_model_path = '/data/t5/spiece.model'
    t5_vocabulary.extra_ids = 100
    # or, in a T5X run, the model's own vocabulary object:
    output_vocabulary.vocabulary = %VOCABULARY

With none of these bound, a backbone checkpoint that ships a tokenizer (a Hugging Face
folder's ``spiece.model``, the embedded backbone's bytes) provides it
(``TASK_VOCABULARY.adopt``, called when the backbone is loaded).

Once resolved, the vocabulary stays fixed for the process; call
``TASK_VOCABULARY.reset()`` after changing the bindings in the same process.
"""

from __future__ import annotations

import gin
import seqio
import tensorflow as tf

# The vocabulary of the public T5 / T5 1.1 checkpoints (32,000 pieces + 100 sentinels).
DEFAULT_T5_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
VOCABULARY_KINDS = ("t5", "byte")


@gin.configurable
def t5_vocabulary(
    sentencepiece_model_path: str = DEFAULT_T5_SPM_PATH, extra_ids: int = DEFAULT_EXTRA_IDS
) -> seqio.SentencePieceVocabulary:
    """T5's SentencePiece vocabulary; the model file is read lazily on first use."""
    return seqio.SentencePieceVocabulary(sentencepiece_model_path, extra_ids=extra_ids)


def byte_vocabulary() -> seqio.ByteVocabulary:
    """UTF-8 bytes (ids 3..258; 0 pad, 1 EOS, 2 UNK): needs no file."""
    return seqio.ByteVocabulary()


@gin.configurable
def output_vocabulary(
    kind: str = "t5", vocabulary: seqio.Vocabulary | None = None
) -> seqio.Vocabulary:
    """The vocabulary of the ``inputs`` and ``targets`` features of every mpt task.

    Args:
      kind: ``"t5"`` (:func:`t5_vocabulary`) or ``"byte"`` (:func:`byte_vocabulary`).
      vocabulary: a vocabulary object that overrides ``kind``; in a T5X gin file bind the
        model's own (``output_vocabulary.vocabulary = %VOCABULARY``) so T5X's check that
        task and model vocabularies match holds by construction.
    """
    if vocabulary is not None:
        if not isinstance(vocabulary, seqio.Vocabulary):
            raise TypeError(
                f"output_vocabulary.vocabulary must be a seqio.Vocabulary; got "
                f"{type(vocabulary).__name__}."
            )
        return vocabulary
    if kind == "t5":
        return t5_vocabulary()
    if kind == "byte":
        return byte_vocabulary()
    raise ValueError(f"output_vocabulary.kind must be one of {VOCABULARY_KINDS}; got {kind!r}.")


_VOCABULARY_BINDINGS = (
    "output_vocabulary.kind",
    "output_vocabulary.vocabulary",
    "t5_vocabulary.sentencepiece_model_path",
)


def vocabulary_is_bound() -> bool:
    """Whether gin binds the tasks' vocabulary (then a backbone's tokenizer is only checked
    against it, never silently used instead)."""
    for name in _VOCABULARY_BINDINGS:
        try:
            gin.query_parameter(name)
            return True
        except ValueError:
            continue
    return False


class ConfiguredVocabulary(seqio.Vocabulary):
    """A vocabulary that becomes ``output_vocabulary()`` the first time it is used."""

    def __init__(self) -> None:
        super().__init__(extra_ids=0)
        self._resolved: seqio.Vocabulary | None = None

    @property
    def resolved(self) -> seqio.Vocabulary:
        """The underlying vocabulary (built from the gin bindings on first access)."""
        if self._resolved is None:
            self._resolved = output_vocabulary()
        return self._resolved

    def adopt(self, vocabulary: seqio.Vocabulary) -> bool:
        """Uses ``vocabulary`` (a backbone's own tokenizer) unless gin binds a vocabulary
        (:func:`vocabulary_is_bound`) or one was adopted already; returns whether it did."""
        if vocabulary_is_bound() or self._resolved is not None:
            return False
        self._resolved = vocabulary
        return True

    def reset(self) -> None:
        """Forgets the resolved vocabulary (tests, or a new configuration in one process)."""
        self._resolved = None

    # Everything seqio asks of a vocabulary is answered by the resolved one.
    @property
    def bos_id(self):
        return self.resolved.bos_id

    @property
    def eos_id(self):
        return self.resolved.eos_id

    @property
    def pad_id(self) -> int:
        return self.resolved.pad_id

    @property
    def unk_id(self):
        return self.resolved.unk_id

    @property
    def extra_ids(self) -> int:
        return self.resolved.extra_ids

    @property
    def vocab_size(self) -> int:
        return self.resolved.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolved._base_vocab_size

    def encode(self, s):
        return self.resolved.encode(s)

    def _encode(self, s):
        return self.resolved.encode(s)

    def decode(self, ids):
        return self.resolved.decode(ids)

    def _decode(self, ids):
        return self.resolved.decode(ids)

    def encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return self.resolved.encode_tf(s)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return self.resolved.encode_tf(s)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return self.resolved.decode_tf(ids)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return self.resolved.decode_tf(ids)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConfiguredVocabulary):
            return other is self or self.resolved == other.resolved
        return isinstance(other, seqio.Vocabulary) and self.resolved == other

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        state = repr(self._resolved) if self._resolved is not None else "unresolved"
        return f"ConfiguredVocabulary({state})"


TASK_VOCABULARY = ConfiguredVocabulary()
"""The one vocabulary object every mpt task's ``inputs`` / ``targets`` features hold."""
