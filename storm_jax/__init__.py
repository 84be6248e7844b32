"""storm-jax: differentiable analysis of StoRM (stochastic regeneration for speech enhancement).

Layout: ``audio`` (STFT, compression, normalisation) · ``sde`` (OUVE) · ``nn`` (NCSN++) ·
``model`` (predictor and score) · ``sampling`` (discrete reverse process over explicit draws) ·
``pipeline`` (waveform → waveform, and the map M ↦ ŝ(M)) · ``continuous`` (diffrax solvers on a
shared Brownian path) · ``analysis`` (pathwise derivatives, factorization, spectra, kinks,
discretization) · ``data`` · ``metrics`` · ``checkpoints``.
"""

from .analysis import ELBO, ConditionImportance, elbo, factorize, importance_of_condition, kink_statistic, pathwise_derivative, si_sdr_derivative
from .audio import SpecConfig, compress, decompress, istft, normalization_factor, pad_frames, stft, unpad_frames
from .checkpoints import load_model, pretrained_path, save_model
from .convert import export_checkpoint, import_checkpoint
from .continuous import BrownianPath, SolveConfig, brownian_path, draws_from_path, solve_reverse
from .data import BatchConfig, BatchIterator, BatchState, CorpusConfig, DatasetError, PairDataset, embedded_corpus, folder_dataset
from .metrics import si_sdr
from .metrics import energy_ratios, enhancement_metrics, estoi, pesq_wb, si_sar, si_sir
from .model import CONDITIONS, SCORE_SYMMETRIES, StormConfig, StormModel, init_storm, param_shapes, predictor, refine, score, score_ensemble, score_guidance, storm_config
from .nn import NCSNpp, NCSNppConfig, ncsnpp_config
from .pipeline import EnhanceConfig, Enhanced, draws_for, enhance, enhance_mixture, enhance_waveform, mix, spec_shape
from .sampling import Draws, SamplerConfig, make_draws, sample, sample_with_score, time_grid
from .sde import OUVE
from .files import FolderBusy, OutputError
from .training import MODES, CheckpointFallback, CheckpointMismatch, TrainConfig, TrainingDiverged, export_ema_model, saved_steps, storm_loss, train, train_step
from .evaluation import evaluate_dataset

__version__ = "0.1.0"

__all__ = [
    # model: configuration, networks, parameters
    "CONDITIONS",
    "SCORE_SYMMETRIES",
    "StormConfig",
    "StormModel",
    "storm_config",
    "init_storm",
    "param_shapes",
    "predictor",
    "refine",
    "score",
    "score_ensemble",
    "score_guidance",
    "NCSNpp",
    "NCSNppConfig",
    "ncsnpp_config",
    "OUVE",
    # audio front end: STFT, compression, padding, normalisation
    "SpecConfig",
    "stft",
    "istft",
    "compress",
    "decompress",
    "pad_frames",
    "unpad_frames",
    "normalization_factor",
    # enhancement: the pipeline y(M) ↦ ŝ(M) and the discrete sampler over explicit draws
    "EnhanceConfig",
    "Enhanced",
    "enhance",
    "enhance_mixture",
    "enhance_waveform",
    "mix",
    "spec_shape",
    "draws_for",
    "Draws",
    "SamplerConfig",
    "make_draws",
    "sample",
    "sample_with_score",
    "time_grid",
    # continuous time: diffrax solvers on a shared Brownian path
    "BrownianPath",
    "SolveConfig",
    "brownian_path",
    "draws_from_path",
    "solve_reverse",
    # differentiable analysis (more in storm_jax.analysis)
    "pathwise_derivative",
    "si_sdr_derivative",
    "factorize",
    "kink_statistic",
    # noise schedule and condition (second seed): the ELBO's terms, Importance of Condition
    "ELBO",
    "elbo",
    "ConditionImportance",
    "importance_of_condition",
    # metrics
    "si_sdr",
    "si_sar",
    "si_sir",
    "energy_ratios",
    "enhancement_metrics",
    "pesq_wb",
    "estoi",
    # data: the embedded corpus, dataset folders, training batches
    "CorpusConfig",
    "embedded_corpus",
    "folder_dataset",
    "PairDataset",
    "DatasetError",
    "BatchConfig",
    "BatchIterator",
    "BatchState",
    # training and evaluation
    "MODES",
    "TrainConfig",
    "train",
    "train_step",
    "storm_loss",
    "saved_steps",
    "export_ema_model",
    "evaluate_dataset",
    "TrainingDiverged",
    "CheckpointMismatch",
    "CheckpointFallback",
    # model directories and PyTorch checkpoints
    "load_model",
    "save_model",
    "pretrained_path",
    "import_checkpoint",
    "export_checkpoint",
    # files a run writes: atomic, with the umask's permissions, one process per run folder
    "OutputError",
    "FolderBusy",
]
