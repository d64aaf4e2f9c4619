"""The incident path: interventions, where to act, the playbook, the LangGraph workflow and its actuators."""
