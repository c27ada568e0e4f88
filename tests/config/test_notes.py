"""Start-up notes: options the chosen mode does not read, and a memory larger than --memory-size."""
from __future__ import annotations

import pytest

from continual.config import parse_config, settings_from
from continual.config.notes import context_notes, memory_note

DEMO = ["--options", "options/data/digits_demo.yaml", "options/model/demo_tiny.yaml"]


def test_options_the_chosen_method_does_not_read_get_a_note() -> None:
    baseline = parse_config(DEMO + ["--no-dytox", "--freeze-task", "--freeze-ft"])  # demo: head_div 0.1
    assert context_notes(baseline) == ["head_div 0.1: no effect without DyTox (the baseline has one classifier)"]
    assert "embed_dim, num_heads" in context_notes(parse_config(DEMO + ["--resnet"]))[0]
    assert "embed_dim, num_heads" in context_notes(parse_config(DEMO + ["--encoder", "resnet18"]))[0]
    assert context_notes(parse_config(DEMO + ["--encoder", "timm:resnet10t"])) == [
        "--encoder timm:resnet10t: the decoder is 1 TAB(s) (depth - local_up_to_layer) of 4 heads on the encoder's "
        "width; embed_dim, qkv_bias and locality_strength of the options size the ConViT only"]
    named = context_notes(parse_config(DEMO + ["--output-dir", "here", "--name", "x", "--pod", "1", "--no-auto-kd"]))
    assert len(named) == 2 and named[0].startswith("--output-dir 'here': replaced") and "without a teacher" in named[1]
    assert context_notes(parse_config(DEMO)) == []


def memory_of(*flags: str):
    return settings_from(parse_config(DEMO + list(flags))).memory


def test_the_published_memory_on_several_processes_names_its_total_and_the_erratum_s_two_protocols() -> None:
    note = memory_note(memory_of("--memory-size", "1000"), world_size=2)
    assert note is not None
    assert note.startswith("published memory: each of the 2 processes keeps its own --memory-size 1000 exemplars, "
                           "2000 in all.")
    assert "erratum" in note and "--distributed-memory --memory-size TOTAL" in note
    assert "--global-memory --memory-size TOTAL" in note and "TOTAL/2 of its own" in note
    assert note.endswith("This run equals --distributed-memory --memory-size 2000.")
    assert "8000 in all" in memory_note(memory_of("--memory-size", "2000"), world_size=4)  # type: ignore[operator]


@pytest.mark.parametrize(("flags", "world_size"), [
    (["--memory-size", "2000"], 1),  # one process: the memory is the budget
    (["--memory-size", "2000", "--global-memory"], 2),
    (["--memory-size", "2000", "--distributed-memory"], 2),
    (["--memory-size", "0"], 2),  # no memory at all
])
def test_no_memory_note_when_the_total_is_the_budget(flags: list[str], world_size: int) -> None:
    assert memory_note(memory_of(*flags), world_size) is None
