"""Web task synthesis: tutorial text -> AgentTrek-style task spec -> `WebTask` (see spec.py)."""
