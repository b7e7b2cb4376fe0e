"""LangGraph agents: data quality, policy compliance, incident summaries, recommendations,
notifications. Each agent is a package module with its state, nodes and graph; all share
`base.AgentContext` (tenant, LLM, search, audit) and record every run (`agent_run` rows
plus an audit entry with inputs, cited documents and the model that answered)."""
