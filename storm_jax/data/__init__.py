"""Data: the embedded speech corpus, directory datasets, mixing at amplitude M, training batches.

Typical use for training::

    from storm_jax.data import embedded_corpus, BatchConfig, BatchIterator, BatchState

    train = embedded_corpus("train")                 # PairDataset of clean/noise pairs, 16 kHz
    it = BatchIterator(train, BatchConfig(batch_size=8, frames=256, seed=0))
    batch = next(it)                                 # Batch(clean, noisy, noise, m, norm, index, start)
    saved = it.state.to_dict()                       # store with the checkpoint …
    it = BatchIterator(train, it.config, BatchState.from_dict(saved))   # … and resume exactly

Modules: :mod:`.speech` (eSpeak NG), :mod:`.noise`, :mod:`.reverb` (pyroomacoustics),
:mod:`.corpus` (build and cache), :mod:`.folders` (directory datasets), :mod:`.mixing`,
:mod:`.batches`, :mod:`.dataset` (the common :class:`PairDataset`).
"""

from .batches import Batch, BatchConfig, BatchIterator, BatchState, batches_per_epoch, check_batchable, data_fingerprint, epoch_batches, make_batch
from .corpus import SPLITS, TASKS, CorpusConfig, build_corpus, build_corpus_main, cache_root, corpus_dir, embedded_corpus, export_corpus
from .dataset import DatasetError, PairDataset, Utterance
from .folders import LAYOUTS, check_folder_dataset, detect_layout, folder_dataset
from .mixing import m_for_snr, mix, mix_np, scale_to_snr, snr_db, snr_for_m
from .noise import NOISE_TYPES
from .reverb import ReverbConfig
from .speech import DEFAULT_VOICES, SpeechError, Synthesizer, Voice, generate_sentences

__all__ = [
    "Batch",
    "BatchConfig",
    "BatchIterator",
    "BatchState",
    "CorpusConfig",
    "DEFAULT_VOICES",
    "DatasetError",
    "LAYOUTS",
    "NOISE_TYPES",
    "PairDataset",
    "ReverbConfig",
    "SPLITS",
    "SpeechError",
    "Synthesizer",
    "TASKS",
    "Utterance",
    "Voice",
    "batches_per_epoch",
    "build_corpus",
    "build_corpus_main",
    "cache_root",
    "check_batchable",
    "check_folder_dataset",
    "corpus_dir",
    "data_fingerprint",
    "detect_layout",
    "embedded_corpus",
    "epoch_batches",
    "export_corpus",
    "folder_dataset",
    "generate_sentences",
    "m_for_snr",
    "make_batch",
    "mix",
    "mix_np",
    "scale_to_snr",
    "snr_db",
    "snr_for_m",
]
