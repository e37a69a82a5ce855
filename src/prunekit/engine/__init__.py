"""Training engine: a stage-based trainer, callbacks in PyTorch's idiom, safe checkpoints, torchrun support
(:mod:`prunekit.engine.distributed`)."""

from prunekit.engine import distributed
from prunekit.engine.callbacks import Callback, LoopState, TrainingLoop
from prunekit.engine.checkpoint import load_checkpoint, save_checkpoint
from prunekit.engine.stages import OptimConfig, Stage, lr_factor
from prunekit.engine.trainer import Trainer, TrainerConfig, evaluate, pick_device, seed_everything

__all__ = ["Callback", "LoopState", "OptimConfig", "Stage", "Trainer", "TrainerConfig", "TrainingLoop", "distributed",
           "evaluate", "load_checkpoint", "lr_factor", "pick_device", "save_checkpoint", "seed_everything"]
