"""The RL loop over the supervisor's decisions: tasks and their prompts (``tasks``), rewards
measured by rerunning (``reward``, ``outcomes``), the policy (``policy``), rollout sources
(``rollouts``), the recording gateway (``gateway``) and the loop that wires trainer.rl's
primitives together (``loop``)."""
