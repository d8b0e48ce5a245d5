"""The fleet update agent: unattended updates, health-gated commit, automatic rollback.

``schedule`` and ``machine`` are pure (time arithmetic, the persisted state machine); ``seam``
names what the agent needs from the rest of the system; ``runner`` carries the decisions out.
"""
