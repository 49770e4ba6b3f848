"""Students of the ensemble: ``teach`` resolves a teacher (the blend refit outside fold k, applied to the fold-k
models) and builds the pseudo-label table, without torch; ``teacher`` trains the students (``make pseudo``,
``make distill``): packed soft targets, the distillation loss, the teacher's checkpoints on the training rows."""
