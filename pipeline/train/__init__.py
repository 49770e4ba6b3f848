"""Stage 2: fine-tune one architecture on every fold, predict its validation fold and the test set.

Per fold: augmentation at the model's own input size (albumentations per image on the
host, and/or batched on the device: :mod:`pipeline.vision`), the model's own
normalisation (on the device), AdamW with linear warm-up then cosine decay, AMP (bf16, or
fp16 with a grad scaler) on a GPU, channels_last (GPU and CPU), the best checkpoint by the validation
metric, early stopping, and a progress bar. The training state is saved after every epoch,
so a rerun after a crash continues the unfinished fold and skips finished ones.

Rooms (each imports only the ones above it):

=============  ==========================================================================
heads          the task's loss and activation (the torch half of :mod:`pipeline.task.tasks`)
dataset        the Dataset over an image store, ``FoldData``
runtime        device, AMP dtype, loader settings, ``to_device``/``autocast``
finetune       head-only epochs (frozen body) and layer-wise lr groups (timm ``param_groups_layer_decay``)
steps          optimiser, warm-up + cosine schedule, ``train_step``, loss checks
model          building, seeding, DDP and ``torch.compile`` wrapping
batch_size     the largest batch that fits the GPU
checkpoint     training state (resume) and best weights
recipes        weight EMA (timm ``ModelEmaV3``), mixup/cutmix (timm ``Mixup``), weight averaging, progressive sizes
predict        TTA views in one pass, ``predict_fold``, fold prediction files
images         the decoded-image cache or an in-memory store, the model's input size
loop           ``train_one_epoch``, ``evaluate``, ``train_fold``
tracked        what a fold and a finished run record with experiment tracking (:mod:`pipeline.tracking`)
stage          ``run_train``/``run_predict``: the run spec, locks, DDP orchestration, assembly
lr_find        the learning-rate range test (``make lr-find``): no run is written
seeds          seed bags (``SEEDS=``): run names, seeds, the bag's mean-OOF score
=============  ==========================================================================
"""

from pipeline.train.stage import run_predict, run_train, train_leaderboard
from pipeline.train.steps import TrainingError

__all__ = ["TrainingError", "run_predict", "run_train", "train_leaderboard"]
