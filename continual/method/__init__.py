"""The continual-learning method: DyTox as a learner with the hooks the task loop calls
(``dytox_learner``), its loss, exemplar selection and the rehearsal memory, SAM, and the metrics."""
