"""Continual-learning methods: the ``Learner`` protocol the task loop depends on (``learner``), the registry
``--method`` names (``registry``), what rehearsal methods share (``replay``), DyTox (``dytox_learner`` and its
``dytox_objective``), experience replay (``er``), the losses, exemplar selection and the memory, SAM, and the
metrics."""
