# Everything the project needs, from nothing but Python >= 3.10.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_output
# `make` installs the package with these extras at the versions pinned in CONSTRAINTS: every
# package, direct and transitive, as the whole suite last passed with them (`make upgrade` renews
# the pins). The pins hold for the Python version named in the file's header; with another one,
# or with `make CONSTRAINTS= install`, pip takes the newest versions setup.cfg allows.
EXTRAS      ?= dev,beam
CONSTRAINTS ?= constraints.txt
PYTHON_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PINNED_PYTHON  := $(if $(CONSTRAINTS),$(shell sed -n \
  '1,5s/.* on Python \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' $(CONSTRAINTS) | head -n 1))
PINS := $(if $(filter $(PYTHON_VERSION),$(PINNED_PYTHON)),--constraint $(CONSTRAINTS))

.PHONY: install test test-fast upgrade demo bench clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 is required"'
	@$(if $(CONSTRAINTS),$(if $(PINS),,echo "note: $(CONSTRAINTS) pins versions for Python \
	  $(PINNED_PYTHON), this is $(PYTHON_VERSION): installing the newest versions setup.cfg allows"))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PINS) --upgrade pip
	$(PY) -m pip install --quiet $(PINS) $(PINS:--constraint=--build-constraint) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

# Printed before the tests: the versions that matter most when a test fails (read from the
# installed metadata, without importing anything).
VERSIONS := 'import importlib.metadata as m, platform; \
  v = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in m.distributions()}; \
  names = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "protobuf"); \
  print("Python", platform.python_version() + ":", ", ".join(f"{n} {v[n]}" for n in names if n in v))'

# Two test processes: much of the suite is single-threaded tracing and subprocess start-up, so
# two processes finish sooner than one (`PYTEST_WORKERS=0`: one); `worksteal` hands a worker that
# runs out of tests some of the other's, so the long tests do not leave one idle at the end.
PYTEST_WORKERS ?= 2
PYTEST := -m pytest -q --timeout=900 -n $(PYTEST_WORKERS) --dist worksteal
test: $(STAMP)
	@$(PY) -c $(VERSIONS)
	$(PY) $(PYTEST)

# The edit-test loop: the whole suite but the tests that start processes or train for long
# (markers subprocess, multiprocess, slow; see tests/conftest.py). CI runs `make test`.
test-fast: $(STAMP)
	@$(PY) -c $(VERSIONS)
	$(PY) $(PYTEST) -m 'not slow and not multiprocess and not subprocess'

# Renews CONSTRAINTS: installs the newest versions setup.cfg allows into a scratch venv, runs the
# whole suite there and writes the pins only if it passes (else the scratch venv stays for a look).
# To try a newer release series than setup.cfg allows, raise its upper bound first.
UPGRADE_VENV := .venv-upgrade
UPGRADE_PY   := $(UPGRADE_VENV)/bin/python
PINS_HEADER  := 'import platform as p, sys; print(f"\# Every package of .[$(EXTRAS)], direct and \
  transitive, at the versions the whole suite passed\n\# with, written by make upgrade on Python \
  {sys.version_info[0]}.{sys.version_info[1]} ({p.python_version()}, {p.system()} {p.machine()}); \
  do not edit by hand.")'
upgrade:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_PY) -m pip install --quiet --upgrade pip
	$(UPGRADE_PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@$(UPGRADE_PY) -c $(VERSIONS)
	$(UPGRADE_PY) $(PYTEST)
	$(UPGRADE_PY) -c $(PINS_HEADER) > $(CONSTRAINTS).new
	$(UPGRADE_PY) -m pip freeze --all --exclude-editable >> $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(UPGRADE_VENV)
	@echo "$(CONSTRAINTS) renewed (see git diff $(CONSTRAINTS)); make install installs it"

# The whole job on the built-in SYNTHETIC data: build TFRecords -> MICLe pretraining -> fine-tuning
# with 10% of the labels -> evaluation with confidence intervals, temperature scaling and its HTML
# report -> calibrated SavedModel export -> predict.
DEMO_MODEL := --resnet_depth=18 --width_multiplier=0.5 --image_size=64 --num_proj_layers=2
DEMO_DATA  := --data_dir=$(DEMO_DIR)/data

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(PY) -m simclr_med.make_synthetic --output_dir=$(DEMO_DIR)/images
	$(PY) -m data_prep.build --format=generic --manifest=$(DEMO_DIR)/images/metadata.csv \
	    --image_root=$(DEMO_DIR)/images --image_id_column=image_id --case_column=case_id \
	    --patient_column=patient_id --label_column=label --output_dir=$(DEMO_DIR)/data --noprogress
	# SimCLR's small-batch recipe (LARS, lr 0.075 x sqrt(batch), temperature 0.5); crops of at least
	# 40% of the image, since the synthetic shapes are small.
	$(PY) run.py --mode=pretrain --use_micle --augmentation=simclr --crop_area_min=0.4 \
	    $(DEMO_DATA) $(DEMO_MODEL) --model_dir=$(DEMO_DIR)/micle --train_batch_size=32 \
	    --train_steps=200 --optimizer=lars --learning_rate=0.075 --learning_rate_scaling=sqrt \
	    --warmup_epochs=2 --temperature=0.5
	$(PY) run.py --mode=finetune --init_checkpoint=$(DEMO_DIR)/micle --label_fraction=0.1 \
	    $(DEMO_DATA) $(DEMO_MODEL) --model_dir=$(DEMO_DIR)/finetune --train_batch_size=16 \
	    --train_steps=120 --checkpoint_steps=20 --optimizer=adam --learning_rate=0.002 \
	    --learning_rate_scaling=sqrt --warmup_epochs=1 --weight_decay=1e-4
	$(PY) run.py --mode=eval --model_dir=$(DEMO_DIR)/finetune $(DEMO_DATA) --eval_split=test \
	    --calibrate --calibration_split=validation
	$(PY) run.py --mode=export --model_dir=$(DEMO_DIR)/finetune --export_dir=$(DEMO_DIR)/export \
	    --calibrate
	$(PY) -m simclr_med.predict --export_dir=$(DEMO_DIR)/export \
	    $(DEMO_DIR)/images/images/case00000_0.png $(DEMO_DIR)/images/images/case00001_0.png
	@echo
	@echo "Demo done (SYNTHETIC data). Results in $(DEMO_DIR)/:"
	@echo "  data/      TFRecords, dataset_info.json, report.json"
	@echo "  micle/     MICLe pretraining: checkpoints, summary.json, TensorBoard events"
	@echo "  finetune/  fine-tuning: best/, summary.json, eval_test.json, predictions_test.csv, *.png,"
	@echo "             calibration.json (the temperature)"
	@echo "  export/    SavedModels: serving/ (calibrated), features/"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO_DIR)"
	@echo "The evaluation's report (open it in a browser): $(DEMO_DIR)/finetune/report_test.html"

# The short benchmarks (a few minutes), each alternating its settings in fresh processes:
# the pretraining step of ResNet-18 at 32 px in float32 with Keras's and the fused batch norm,
# and with XLA; the input
# pipeline alone on one core (SimCLR and MICLe, 64 px); evaluation and serving of ResNet-18 at
# 64 px. With no --setting each script runs the README's full table.
# (bfloat16: add --setting=...,precision=mixed_bfloat16; 10x slower where it is emulated.)
BENCH_SHORT := --setting=depth=18,size=32,batch=64,blur=0,fused_bn=0 \
  --setting=depth=18,size=32,batch=64,blur=0 --setting=depth=18,size=32,batch=64,blur=0,jit=1 \
  --rounds=2 --steps=8
BENCH_INPUT := --setting=micle=0,augment=simclr,size=64 --setting=micle=1,augment=cxr,size=64 \
  --rounds=2
BENCH_INFERENCE := --setting=depth=18,size=64 --rounds=2
bench: $(STAMP)
	$(PY) bench/pretrain_step.py $(BENCH_SHORT)
	$(PY) bench/input_pipeline.py $(BENCH_INPUT)
	$(PY) bench/inference.py $(BENCH_INFERENCE)

clean:
	rm -rf $(VENV) $(UPGRADE_VENV) $(DEMO_DIR) *.egg-info
