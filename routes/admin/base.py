"""Core admins: teams, memberships, deployments with overrides and keys (issue 2 builds this)."""
