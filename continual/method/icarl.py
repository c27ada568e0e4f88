"""iCaRL (``--method icarl``; Rebuffi et al., "iCaRL: Incremental Classifier and Representation Learning", CVPR
2017), on the baseline's network (``--no-dytox``: one encoder, one classifier that grows).

- Loss: sigmoid binary cross-entropy over every class seen, on the task's images and the memory. The targets of
  the new classes' columns are the labels (one-hot, or MixUp's soft targets); those of the old classes' columns
  are the previous model's sigmoid outputs (the paper's distillation). The first task has no previous model: the
  labels in every column. Mean over batch and classes, as the authors' Theano code averages over all elements;
  logged as ``classification`` (the new columns' share of that mean) and ``kd`` (the old columns').
- Memory: herding (``--rehearsal``, normally icarl_all), the memory update every rehearsal method has.
- Classification: the nearest mean of exemplars. A class's mean is the mean of the L2-normalised features of
  its exemplars (test transform), normalised again; an image goes to the class whose mean is closest to its
  normalised feature. The means are computed before each evaluation from the exemplars of every process
  (their feature sums and counts summed across processes). The head's own top-1 is logged beside it
  (``acc1_other["head"]``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from continual.data.images import image_taskset
from continual.method.learner import Predictor, TeacherOutput
from continual.method.losses import LossTerms, one_hot
from continual.method.rehearsal import extract_features
from continual.method.replay import RehearsalLearner
from continual.model.base import ContinualModel, ModelOutput
from continual.runtime.distributed import all_reduce_sum, gather_objects, shard


# ---------------------------------------------------------------- the loss
def icarl_targets(targets: Tensor, nb_classes: int, teacher_logits: Tensor | None) -> Tensor:
    """(B, C) targets of the binary cross-entropy: the labels (class indices (B,) made one-hot, or soft (B, C)),
    the old classes' columns replaced by the teacher's sigmoid outputs when there is a teacher."""
    labels = targets.float() if targets.dim() == 2 else one_hot(targets, nb_classes, torch.float32)
    if teacher_logits is None:
        return labels
    nb_old = teacher_logits.shape[1]
    return torch.cat((torch.sigmoid(teacher_logits.float()), labels[:, nb_old:]), dim=1)


@dataclass(frozen=True)
class IcarlLoss:
    """Binary cross-entropy of every seen class's logit against ``icarl_targets``, averaged over all elements."""

    def wants_teacher_maps(self, first_pass: bool) -> bool:
        return False

    def __call__(self, out: ModelOutput, teacher: TeacherOutput | None, targets: Tensor,
                 first_pass: bool = True) -> LossTerms:
        logits = out.logits.float()
        teacher_logits = None if teacher is None else teacher.logits
        per_element = F.binary_cross_entropy_with_logits(
            logits, icarl_targets(targets, logits.shape[1], teacher_logits), reduction="none")  # (B, C)
        if teacher_logits is None:
            return LossTerms(classification=per_element.mean())
        nb_old, nb_elements = teacher_logits.shape[1], per_element.numel()
        return LossTerms(classification=per_element[:, nb_old:].sum() / nb_elements,
                         kd=per_element[:, :nb_old].sum() / nb_elements)


# ---------------------------------------------------- the nearest mean of exemplars
def normalised(features: Tensor) -> Tensor:
    """Each row divided by its L2 norm."""
    return F.normalize(features.float(), dim=1)


def class_feature_sums(features: Tensor, labels: Tensor, nb_classes: int) -> tuple[Tensor, Tensor]:
    """Per class, the sum of the normalised features (C, D) (float64, so that sums from several processes add
    up in any order) and the number of exemplars (C,)."""
    sums = torch.zeros(nb_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, normalised(features).double())
    counts = torch.bincount(labels, minlength=nb_classes).double()
    return sums, counts


@dataclass(frozen=True)
class NearestMeans:
    """The class means (C, D) of the exemplars and which classes have any (C,)."""

    means: Tensor
    present: Tensor

    @classmethod
    def from_sums(cls, sums: Tensor, counts: Tensor) -> NearestMeans:
        """Means from the per-class sums of normalised features and counts (of one process, or summed over
        processes: the mean of the union), normalised again."""
        present = counts > 0
        means = normalised(sums / counts.clamp(min=1)[:, None])
        return cls(means, present)

    def scores(self, features: Tensor) -> Tensor:
        """(B, C): minus the distance of each normalised feature to each class mean; -inf for a class without
        exemplars (the arg-max is the nearest mean)."""
        if not bool(self.present.any()):  # no exemplar at all (no memory): no class has a mean
            return torch.full((len(features), len(self.present)), float("-inf"), device=features.device)
        distances = torch.cdist(normalised(features), self.means.to(features.device))
        return (-distances).masked_fill(~self.present.to(features.device), float("-inf"))


def last_feature(out: ModelOutput) -> Tensor:
    """The encoder's feature (B, D): the baseline's one "task embedding" (the last one of a model with several)."""
    return out.task_embeddings[-1]  # type: ignore[attr-defined]


def head_scores(model: ContinualModel, images: Tensor) -> Tensor:
    """The classifier's own logits."""
    return model(images).logits


@dataclass
class ICaRL(RehearsalLearner):
    """iCaRL: binary cross-entropy with the previous model's outputs as the old classes' targets, herding, and
    the nearest-mean-of-exemplars classifier."""

    nearest_means: NearestMeans | None = field(default=None, init=False)

    def begin_task(self, model: ContinualModel, task_id: int) -> ContinualModel | None:
        """The teacher (a frozen copy of the model before it grows), then the new classes' rows; all trains."""
        return self.grow_after_teacher(model, task_id)

    def training_set(self, task_id: int) -> Dataset:
        """The task's images and every exemplar of the memory, once."""
        return self.with_memory(self.scenarios.training_set(task_id))

    def objective(self, model: ContinualModel, phase: str) -> IcarlLoss:
        return IcarlLoss()

    # ------------------------------------------------------------ evaluation
    def _own_exemplars(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exemplars whose features this process adds to the class sums: its share of a global memory (every
        process holds the same one), or all of its own memory."""
        x, y, t = self.memory.get()
        if self.memory_mode == "global" and len(y):
            mine = np.asarray(shard(len(y), self.ctx), dtype=np.int64)
            x, y, t = x[mine], y[mine], t[mine]
        return x, y, t

    def _own_features(self, model: ContinualModel, task_id: int) -> tuple[Tensor, Tensor]:
        """Features (N, D) and labels (N,) of this process's exemplars, with the test transform; (0, 0) and (0,)
        without any."""
        x, y, t = self._own_exemplars()
        if not len(y):
            return torch.zeros(0, 0, device=self.ctx.device), torch.zeros(0, dtype=torch.long, device=self.ctx.device)
        exemplars = image_taskset(x, y, t, trsf=self.scenarios.test[0].trsf,
                                  data_type=self.scenarios.train[0].data_type)
        features, labels = extract_features(model, self.feature_loader(exemplars, task_id, 0), "token",
                                            self.ctx.device)
        return torch.from_numpy(features).to(self.ctx.device), torch.from_numpy(labels).long().to(self.ctx.device)

    def prepare_evaluation(self, model: ContinualModel, task_id: int) -> None:
        """The class means of the exemplars of every process. Collectives: every process calls it at the same
        point, even one without exemplars (which adds zeros of the feature width the others report)."""
        features, labels = self._own_features(model, task_id)
        width = max(gather_objects(features.shape[1]))  # 0: no process holds an exemplar
        if not len(labels):
            features = torch.zeros(0, width, device=self.ctx.device)
        sums, counts = class_feature_sums(features, labels, model.nb_classes)
        self.nearest_means = NearestMeans.from_sums(all_reduce_sum(sums), all_reduce_sum(counts))

    def predict(self, model: ContinualModel, images: Tensor) -> Tensor:
        """Scores of the nearest mean of exemplars (``prepare_evaluation`` computed the means)."""
        if self.nearest_means is None:
            raise RuntimeError("iCaRL predicts with the class means: prepare_evaluation must run first")
        return self.nearest_means.scores(last_feature(model(images)))

    def other_predictions(self, model: ContinualModel) -> dict[str, Predictor]:
        """The head's own top-1, logged beside the nearest mean's."""
        return {"head": head_scores}
