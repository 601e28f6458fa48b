"""The lm-evaluation-harness bridge, both directions.

* lm-eval drives xlsteer: :mod:`.model` (``XlsteerLM``, lm-eval's model ``xlsteer``),
  :mod:`.run` (``run_lm_eval``, what ``xlsteer lm-eval`` runs), :mod:`.xcopa` (offline XCOPA
  task configs read from the data dir), and ``python -m xlsteer.lmeval`` (lm-eval's own CLI with
  the ``xlsteer`` model registered).
* xlsteer runs lm-eval tasks: ``--task lmeval:T_en,T_sw`` is one TaskSpec (:mod:`.tasks`), built
  from the tasks' configs (:mod:`.config`) and documents (:mod:`.docs`).

Both directions tell a task's language from its name the same way (:mod:`.languages`), and only
:mod:`.harness` touches lm-eval's internals. Nothing is imported here: lm-eval is an optional
dependency, and importing a submodule should not import the others.
"""
