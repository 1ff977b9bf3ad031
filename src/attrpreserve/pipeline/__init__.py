"""Demo, train, compress and evaluate as plain functions over config objects (the CLI's engine).

Which module owns what:

- :mod:`.configs`: ``DataConfig``, ``TeacherConfig``, ``CompressConfig`` and their validation;
  the data helpers the stages share (``resolve_data``, ``labels_for``, cached datasets), and
  ``scope_to_folder`` (a ``pretrained:`` model scored on a class folder keeps its classes).
- :mod:`.stages`: the stage runners ``train_teacher``, ``compress``, ``evaluate``, ``audit``,
  ``explain`` (heatmap PNGs), ``load_models`` (each model loaded once for evaluation and
  report), ``versions``, ``is_finished`` (a checkpoint made with exactly a
  config, for reuse), and results I/O: ``write_results``, ``format_table``, ``report``.
- :mod:`.experiments`: ``DemoConfig`` with its presets ``QUICK`` / ``FULL`` and
  ``STRENGTH_NOTE``, ``demo``, strength sweeps (``sweep``, ``sweep_rows``, ``saved_sweeps``).
  They call the stages through the :mod:`.stages` module (patch stages there).
- :mod:`.photos`: real photos (``attrpreserve demo --photos``, ``bench/imagenette.py``):
  ``PhotosConfig`` with its presets ``CPU`` / ``GPU``, ``photos_demo``; a pretrained teacher
  restricted to a class folder, compressed naive vs matched, through the uint8 photo cache.

Configs import no stage code and stages nothing from the experiments. This package re-exports
the public names its callers use (the CLI, bench/, tests).
"""

from ..recipes import RECIPES
from .configs import (CompressConfig, DataConfig, TeacherConfig, labels_for, resolve_data,
                      scope_to_folder)
from .experiments import (DEMOS, FULL, QUICK, STRENGTH_NOTE, VIT, DemoConfig, demo,
                          demo_teacher_config, saved_sweeps, sweep, sweep_rows)
from .photos import CPU as PHOTOS_CPU
from .photos import GPU as PHOTOS_GPU
from .photos import PhotosConfig, photos_demo
from .stages import (Loaded, audit, compress, evaluate, explain, format_table, is_finished,
                     load_models, report, train_teacher, versions, write_results)

__all__ = ["RECIPES", "CompressConfig", "DataConfig", "TeacherConfig", "labels_for",
           "resolve_data", "scope_to_folder", "DEMOS", "FULL", "QUICK", "VIT", "STRENGTH_NOTE",
           "DemoConfig", "demo", "demo_teacher_config", "saved_sweeps",
           "sweep", "sweep_rows", "audit", "compress", "evaluate", "explain", "format_table",
           "is_finished", "report", "train_teacher", "versions", "write_results", "Loaded",
           "load_models", "PHOTOS_CPU", "PHOTOS_GPU", "PhotosConfig", "photos_demo"]
