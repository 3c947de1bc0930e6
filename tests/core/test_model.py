import pytest

from orchestrator_core.model import IllegalTransition, Task, TaskState

LEGAL = {
    (TaskState.QUEUED, TaskState.RUNNING),
    (TaskState.QUEUED, TaskState.CANCELED),
    (TaskState.QUEUED, TaskState.EVICTED),
    (TaskState.QUEUED, TaskState.EXPIRED),
    (TaskState.RUNNING, TaskState.COMPLETED),
    (TaskState.RUNNING, TaskState.FAILED),
    (TaskState.RUNNING, TaskState.CANCELED),
    (TaskState.RUNNING, TaskState.QUEUED),
}


@pytest.mark.parametrize("src", list(TaskState))
@pytest.mark.parametrize("dst", list(TaskState))
def test_state_machine_allows_exactly_the_documented_transitions(src, dst):
    """OC-CORE-1010, OC-CORE-1011"""
    task = Task("t", "p", state=src)
    if (src, dst) in LEGAL:
        task.transition(dst)
        assert task.state is dst
    else:
        with pytest.raises(IllegalTransition):
            task.transition(dst)
        assert task.state is src


def test_terminal_states_are_final():
    """OC-CORE-1011"""
    for terminal in (s for s in TaskState if s.terminal):
        task = Task("t", "p", state=terminal)
        for dst in TaskState:
            with pytest.raises(IllegalTransition):
                task.transition(dst)


def test_an_illegal_transition_names_the_task_and_both_states():
    """OC-CORE-1011"""
    task = Task("t1", "p")
    task.transition(TaskState.CANCELED)
    with pytest.raises(IllegalTransition, match="task t1: canceled -> running"):
        task.transition(TaskState.RUNNING)
