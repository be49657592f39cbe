"""The coordinatewise LSTM learned optimizer (Andrychowicz et al., 2016): policy and BPTT trainer."""

from l2o_gym.agents.lstm.multi import (
    CONV_KINDS,
    KindMismatchError,
    MultiLSTMPolicy,
    init_from_checkpoint,
    load_multi_policy,
    load_pretrained_multi,
)
from l2o_gym.agents.lstm.policy import (
    PRETRAINED,
    CoordinateLSTM,
    LSTMConfig,
    LSTMPolicy,
    load_policy,
    load_pretrained,
    preprocess,
)
from l2o_gym.agents.lstm.trainer import TrainConfig, Trainer, time_meta_iteration, train

__all__ = [
    "CONV_KINDS",
    "KindMismatchError",
    "MultiLSTMPolicy",
    "init_from_checkpoint",
    "load_multi_policy",
    "load_pretrained_multi",
    "PRETRAINED",
    "CoordinateLSTM",
    "LSTMConfig",
    "LSTMPolicy",
    "TrainConfig",
    "Trainer",
    "load_policy",
    "load_pretrained",
    "preprocess",
    "time_meta_iteration",
    "train",
]
