"""storm-jax: differentiable analysis of StoRM (stochastic regeneration for speech enhancement).

Layout: ``audio`` (STFT, compression, normalisation) · ``sde`` (OUVE) · ``nn`` (NCSN++) ·
``model`` (predictor and score) · ``sampling`` (discrete reverse process over explicit draws) ·
``pipeline`` (waveform → waveform, and the map M ↦ ŝ(M)) · ``continuous`` (diffrax solvers on a
shared Brownian path) · ``analysis`` (pathwise derivatives, factorization, spectra, kinks,
discretization) · ``data`` · ``metrics`` · ``checkpoints``.
"""

from .analysis import factorize, kink_statistic, pathwise_derivative, si_sdr_derivative
from .audio import SpecConfig, compress, decompress, istft, normalization_factor, pad_frames, stft, unpad_frames
from .checkpoints import load_model, pretrained_path, save_model
from .convert import export_checkpoint, import_checkpoint
from .continuous import BrownianPath, SolveConfig, brownian_path, draws_from_path, solve_reverse
from .data import BatchConfig, BatchIterator, BatchState, CorpusConfig, DatasetError, PairDataset, embedded_corpus, folder_dataset
from .metrics import si_sdr
from .metrics import energy_ratios, enhancement_metrics, estoi, pesq_wb, si_sar, si_sir
from .model import CONDITIONS, SCORE_SYMMETRIES, StormConfig, StormModel, init_storm, param_shapes, predictor, score, score_ensemble, score_guidance, storm_config
from .nn import NCSNpp, NCSNppConfig, ncsnpp_config
from .pipeline import EnhanceConfig, Enhanced, draws_for, enhance, enhance_mixture, enhance_waveform, mix, spec_shape
from .sampling import Draws, SamplerConfig, make_draws, sample, sample_with_score, time_grid
from .sde import OUVE
from .train import MODES, CheckpointMismatch, TrainConfig, TrainingDiverged, export_ema_model, saved_steps, storm_loss, train, train_step
from .evaluation import evaluate_dataset

__version__ = "0.1.0"

__all__ = [
    # differentiable analysis (issue 5)
    "factorize",
    "kink_statistic",
    "pathwise_derivative",
    "si_sdr_derivative",
    # continuous time (issue 6)
    "BrownianPath",
    "SolveConfig",
    "brownian_path",
    "draws_from_path",
    "solve_reverse",
    # data and metrics (issue 3)
    "BatchConfig",
    "BatchIterator",
    "BatchState",
    "CorpusConfig",
    "DatasetError",
    "PairDataset",
    "embedded_corpus",
    "energy_ratios",
    "enhancement_metrics",
    "estoi",
    "folder_dataset",
    "pesq_wb",
    "si_sar",
    "si_sir",
    # training and evaluation (issue 3, items 5-6)
    "MODES",
    "CheckpointMismatch",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate_dataset",
    "export_ema_model",
    "saved_steps",
    "pretrained_path",
    "storm_loss",
    "train",
    "train_step",
    # core
    "CONDITIONS",
    "SCORE_SYMMETRIES",
    "Draws",
    "EnhanceConfig",
    "Enhanced",
    "NCSNpp",
    "NCSNppConfig",
    "OUVE",
    "SamplerConfig",
    "SpecConfig",
    "StormConfig",
    "StormModel",
    "compress",
    "decompress",
    "draws_for",
    "enhance",
    "enhance_mixture",
    "enhance_waveform",
    "export_checkpoint",
    "import_checkpoint",
    "init_storm",
    "param_shapes",
    "istft",
    "load_model",
    "make_draws",
    "mix",
    "ncsnpp_config",
    "normalization_factor",
    "pad_frames",
    "predictor",
    "sample",
    "sample_with_score",
    "save_model",
    "score",
    "score_ensemble",
    "score_guidance",
    "si_sdr",
    "spec_shape",
    "stft",
    "storm_config",
    "time_grid",
    "unpad_frames",
]
