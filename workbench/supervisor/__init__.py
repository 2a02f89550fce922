"""The fix loop: a LangGraph graph (``graph``) that monitors a run, lets a brain (``brains``)
diagnose it and propose remedies through tools (``tools``), patches a worktree (``patches``),
relaunches, judges the rerun (``verify``), reports and queues a review item (``review``).
``episode`` runs one episode end to end; ``trajectory`` records everything it did; ``report``
writes its markdown + plot report; ``query`` is the one ask-retry-fall-back loop every brain
call goes through (here, in evolve and in mle)."""
